"""The SDK and `aerec recommend` against a real server."""
import asyncio
import subprocess
import sys
import time

import pytest

from client import NoServerError, RecommenderClient, RecommenderError, RequestError, ServerError
from conftest import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(ranker_and_rater_server):
    return ranker_and_rater_server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_user_ratings_batch_async_health(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    rc = RecommenderClient(url, protocol)
    assert rc.healthy()
    assert rc.metadata()["name"] == "recommend"
    by_user = rc.recommend(user_id=42, k=5)
    assert len(by_user.item_ids) == 5 and len(by_user.titles) == 5 and by_user.unknown_items == 0
    assert by_user.scores == sorted(by_user.scores, reverse=True) or len(set(by_user.scores)) < 5
    # Ranked by the top-N model's scores; the rating model's predictions shown beside them.
    assert len(by_user.predicted_ratings) == 5 and all(1 <= r <= 5 for r in by_user.predicted_ratings)
    new_user = rc.recommend(ratings={50: 5.0, 172: 4.0, 999_999: 3.0}, k=3)
    assert new_user.unknown_items == 1 and 50 not in new_user.item_ids
    many = rc.recommend_many([1, 2, 3], k=4)
    assert [m.item_ids for m in many] == [rc.recommend(user_id=u, k=4).item_ids for u in (1, 2, 3)]
    assert asyncio.run(rc.recommend_async(user_id=42, k=5)).item_ids == by_user.item_ids
    async def gather():
        return await asyncio.gather(*(rc.recommend_async(user_id=u, k=4) for u in (1, 2, 3)))
    assert [m.item_ids for m in asyncio.run(gather())] == [m.item_ids for m in many]
    with pytest.raises(RequestError, match="unknown USER_ID") as e:
        rc.recommend(user_id=123_456)
    assert e.value.status == {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}[protocol]
    with pytest.raises(RequestError, match="TOP_K must be in 1..1682, got 5000"):
        rc.recommend(user_id=42, k=5000)
    with pytest.raises(RequestError, match="unknown USER_ID 123456"):
        rc.recommend_many([1, 123_456], k=3)
    with pytest.raises(RequestError, match="unknown USER_ID 123456"):
        asyncio.run(rc.recommend_async(user_id=123_456))
    assert rc.retried == 0  # a refused request is never retried
    assert (by_user.n_recommended, by_user.k, by_user.complete) == (5, 5, True)
    with pytest.raises(ValueError, match="give user_id, ratings or items"):
        rc.recommend()
    # A history without ratings: each item at the scale's top, for the ranker and the rater alike.
    seen, rated = rc.recommend(items=[50, "172"], k=3), rc.recommend(ratings={50: 5.0, 172: 5.0}, k=3)
    assert (seen.item_ids, seen.predicted_ratings) == (rated.item_ids, rated.predicted_ratings)
    assert [m.item_ids for m in rc.recommend_many(items=[[50], [172, 1]], k=3)] == \
        [rc.recommend(ratings=r, k=3).item_ids for r in ({50: 5.0}, {172: 5.0, 1: 5.0})]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_unreachable_server_is_not_healthy_and_a_server_error(protocol):
    """No server: a refused connection at an endpoint that never answered is no server there,
    not a restart: NoServerError (a ServerError, not a RequestError) at once, with what to check."""
    from server.launcher import free_ports
    url = f"127.0.0.1:{free_ports(1)[0]}"
    rc = RecommenderClient(url, protocol)   # the default retries: 11 attempts, about 9 s of backoff
    assert not rc.healthy()
    t0 = time.monotonic()
    with pytest.raises(NoServerError) as e:
        rc.recommend(user_id=1)
    assert time.monotonic() - t0 < 2
    assert isinstance(e.value, (ServerError, RecommenderError)) and not isinstance(e.value, RequestError)
    name = {"grpc": "gRPC", "http": "HTTP"}[protocol]
    assert str(e.value).startswith(f"no server answering {name} at {url} (connection refused")
    assert "is `aerec serve` running" in str(e.value) and "HTTP 8000 and gRPC 8001" in str(e.value)
    assert "\n" not in str(e.value) and rc.retried == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cli_without_a_server_says_what_to_check(protocol):
    from server.launcher import free_ports
    url = f"127.0.0.1:{free_ports(1)[0]}"
    t0 = time.monotonic()
    r = cli("recommend", "--user", "42", "--url", url, "--protocol", protocol)
    assert r.returncode == 2 and time.monotonic() - t0 < 5
    assert r.stderr.startswith(f"error: no server answering {'gRPC' if protocol == 'grpc' else 'HTTP'} at {url}")
    assert "is `aerec serve` running" in r.stderr and len(r.stderr.splitlines()) == 1


def test_timeout_s_bounds_each_attempt_and_call_budget_s_the_call():
    """A listener that never answers (a hung server: the kernel takes the connection, nobody
    reads it) over HTTP: every attempt runs out timeout_s, then the backoff; the call fails
    within call_budget_s and after at least (retries + 1) x timeout_s."""
    import socket
    assert RecommenderClient("127.0.0.1:1", "http", timeout_s=2).call_budget_s == pytest.approx(11 * 2 + 11.15)
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        rc = RecommenderClient(f"127.0.0.1:{hung.getsockname()[1]}", "http", timeout_s=0.3, retries=2,
                               backoff_s=0.2)
        assert rc.call_budget_s == pytest.approx(3 * 0.3 + 0.2 + 0.4)
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="after 3 attempts"):
            rc.metadata()
        took = time.monotonic() - t0
    assert 3 * 0.3 <= took <= rc.call_budget_s + 0.5, took


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_the_other_protocols_port_is_named(server, protocol):
    """gRPC sent to the server's HTTP port, or HTTP to its gRPC port: NoServerError at once,
    saying the port speaks another protocol, the SDK's and the CLI's (exit status 2)."""
    wrong = server.http_url if protocol == "grpc" else server.grpc_url
    other = {"grpc": "HTTP", "http": "gRPC"}[protocol]
    with pytest.raises(NoServerError, match=f"does not speak .*: is it the {other} port"):
        RecommenderClient(wrong, protocol).recommend(user_id=42, k=3)
    r = cli("recommend", "--user", "42", "--url", wrong, "--protocol", protocol)
    assert r.returncode == 2 and f"is it the {other} port" in r.stderr and len(r.stderr.splitlines()) == 1
    assert "HTTP 8000 and gRPC 8001" in r.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_fails_over_from_a_dead_endpoint_in_every_call(server, protocol):
    """A list with one endpoint nobody listens on: every kind of call moves to the live one at
    once (no backoff), the dead one is skipped for its cooldown, and the answers are unchanged."""
    from server.launcher import free_port
    live = server.grpc_url if protocol == "grpc" else server.http_url
    dead = f"127.0.0.1:{free_port()}"
    rc = RecommenderClient(f"{dead}, {live}", protocol, backoff_s=5, cooldown_s=60)
    assert rc.urls == [dead, live] and rc.endpoint_health() == {dead: False, live: True} and rc.healthy()
    alone = RecommenderClient(live, protocol)
    assert rc.recommend(user_id=42, k=5).item_ids == alone.recommend(user_id=42, k=5).item_ids
    assert (rc.retried, rc.failovers) == (1, 1)  # the first request tried the dead one first
    ids = lambda recs: [r.item_ids for r in recs]  # noqa: E731
    assert ids(rc.recommend_many([1, 2], k=3)) == ids(alone.recommend_many([1, 2], k=3))
    assert asyncio.run(rc.recommend_async(user_id=42, k=5)).item_ids == alone.recommend(user_id=42, k=5).item_ids
    assert rc.metadata()["name"] == "recommend"
    assert rc.retried == 1  # the dead endpoint is cooling down: not tried again


def test_cli_recommend_table(server):
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url", server.grpc_url, *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("--user", "42", "-k", "3")
    assert r.returncode == 0, r.stderr
    assert run("--user", "42", "--top-k", "3").stdout == r.stdout   # -k is --top-k's short form
    assert "score" in r.stdout and "predicted rating" in r.stdout and r.stdout.count("\n") >= 5
    r = run("--rate", "50=5", "--rate", "172=4", "--rate", "999999=3", "-k", "3")
    assert r.returncode == 0 and "1 rated item id(s) unknown" in r.stdout
    r = run("--user", "123456")
    assert r.returncode == 2 and "unknown USER_ID 123456" in r.stderr
    r = run("--rate", "50=9")   # the step's own words, without Triton's "in ensemble 'recommend', "
    assert r.returncode == 2 and "error: rating 9 outside scale 1..5" in r.stderr, r.stderr
    r = run("--rate", "50=5", "--rate", "50=4")   # refused as the server refuses an item sent twice
    assert r.returncode == 2 and "--rate gives item 50 more than once: give each item once" in r.stderr
    r = run("--seen", "50", "--seen", "172", "-k", "3")   # no rating sent: no predicted ratings shown
    assert r.returncode == 0 and "no predicted ratings: --seen items carry no rating" in r.stdout
    assert "predicted rating" not in r.stdout.splitlines()[1] + r.stdout.splitlines()[2]   # not in the table's head
    r = run("--user", "42", "--seen", "50", "-k", "3")    # the user's own ratings beside: shown, said to run high
    assert r.returncode == 0 and "predicted ratings take each --seen item as rated at the scale's top" in r.stdout
    r = run("--user", "42", "-k", "1682")  # more than user 42 left unrated: fewer, and said so
    assert r.returncode == 0 and "recommended: no other unrated item is left" in r.stdout


def test_cli_table_leaves_out_titles_a_catalogue_does_not_have(capsys):
    """A catalogue without titles (an interaction log) serves each item's id as its title: the
    table then shows no title column repeating the ids; one with titles shows them."""
    from cli.recommend import print_list
    from client.sdk import Recommendation
    untitled = Recommendation(["sku-9", "sku-4"], [0.9, 0.4], ["sku-9", "sku-4"], 0, n_recommended=2, k=2)
    print_list(untitled)
    out = capsys.readouterr().out
    assert "title" not in out and out.count("sku-9") == 1 and "0.900" in out
    titled = Recommendation([50, 172], [0.9, 0.4], ["Star Wars (1977)", "Empire Strikes Back, The (1980)"], 0,
                            predicted_ratings=[4.6, 4.2], n_recommended=2, k=2)
    print_list(titled)
    out = capsys.readouterr().out
    assert "title" in out and "Star Wars (1977)" in out and "predicted rating" in out and "4.60" in out
