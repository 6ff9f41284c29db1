"""The A/B split's routing (client.sdk.route): sticky per user, each pipeline about its share.
Pure: no server (tests/server/test_side_by_side.py checks the live pipelines)."""
import subprocess
import sys
from collections import Counter

import pytest

from client.sdk import check_split, parse_split, route, route_point

SPLIT = {"recommend": 0.5, "recommend_previous": 0.5}


def test_a_50_50_split_over_2000_users_is_sticky_and_even():
    users = range(1, 2001)
    first = [route(u, SPLIT) for u in users]
    assert first == [route(u, SPLIT) for u in users]          # the same pipeline every time
    counts = Counter(first)
    assert set(counts) == set(SPLIT)
    for name in SPLIT:
        assert abs(counts[name] / 2000 - 0.5) <= 0.05, counts


def test_string_and_integer_ids_route_alike_and_shares_follow_the_weights():
    assert [route(u, SPLIT) for u in range(50)] == [route(str(u), SPLIT) for u in range(50)]
    users = [f"u{i}" for i in range(4000)]
    counts = Counter(route(u, {"a": 9, "b": 1}) for u in users)
    assert abs(counts["b"] / 4000 - 0.1) <= 0.02, counts
    assert {route(u, {"a": 1.0, "b": 0.0}) for u in users} == {"a"}


def test_the_hash_is_stable_across_processes():
    """Python's hash() of a str is salted per process; route_point is not."""
    code = "from client.sdk import route_point; print(repr(route_point('u42')), repr(route_point(42)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) == route_point("u42") and float(out[1]) == route_point(42)
    assert 0.0 <= route_point("u42") < 1.0


@pytest.mark.parametrize("bad", [{}, {"a": -1.0, "b": 1.0}, {"a": 0.0}, {"a": float("nan")}])
def test_a_bad_split_is_refused(bad):
    with pytest.raises(ValueError):
        check_split(bad)


def test_parse_split():
    assert parse_split("recommend=0.5, recommend_previous=0.5") == SPLIT
    with pytest.raises(ValueError, match="PIPELINE=SHARE"):
        parse_split("recommend:0.5")


def test_shadow_needs_two_pipelines():
    from client import RecommenderClient
    with pytest.raises(ValueError, match="shadow"):
        RecommenderClient("127.0.0.1:1", shadow=True)
