"""The SDK and `aerec recommend` against a real server."""
import asyncio
import subprocess
import sys

import pytest

from client import RecommenderClient
from conftest import serve_small_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(u1, tmp_path_factory):
    yield from serve_small_model(u1, tmp_path_factory.mktemp("sdk"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_user_ratings_batch_async_health(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    rc = RecommenderClient(url, protocol)
    assert rc.healthy()
    assert rc.metadata()["name"] == "recommend"
    by_user = rc.recommend(user_id=42, k=5)
    assert len(by_user.item_ids) == 5 and len(by_user.titles) == 5 and by_user.unknown_items == 0
    assert by_user.scores == sorted(by_user.scores, reverse=True) or len(set(by_user.scores)) < 5
    new_user = rc.recommend(ratings={50: 5.0, 172: 4.0, 999_999: 3.0}, k=3)
    assert new_user.unknown_items == 1 and 50 not in new_user.item_ids
    many = rc.recommend_many([1, 2, 3], k=4)
    assert [m.item_ids for m in many] == [rc.recommend(user_id=u, k=4).item_ids for u in (1, 2, 3)]
    assert asyncio.run(rc.recommend_async(user_id=42, k=5)).item_ids == by_user.item_ids
    async def gather():
        return await asyncio.gather(*(rc.recommend_async(user_id=u, k=4) for u in (1, 2, 3)))
    assert [m.item_ids for m in asyncio.run(gather())] == [m.item_ids for m in many]
    with pytest.raises(Exception, match="unknown USER_ID"):
        rc.recommend(user_id=123_456)
    with pytest.raises(ValueError, match="give user_id, ratings, or both"):
        rc.recommend()


def test_sdk_unreachable_server_is_not_healthy():
    from server.launcher import free_port
    assert not RecommenderClient(f"127.0.0.1:{free_port()}", "http", timeout_s=1).healthy()


def test_cli_recommend_table(server):
    run = lambda *a: subprocess.run([sys.executable, "-m", "builder.cli", "recommend", "--url", server.grpc_url, *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("--user", "42", "-k", "3")
    assert r.returncode == 0, r.stderr
    assert "predicted rating" in r.stdout and r.stdout.count("\n") >= 5
    r = run("--rate", "50=5", "--rate", "172=4", "--rate", "999999=3", "-k", "3")
    assert r.returncode == 0 and "1 rated item id(s) unknown" in r.stdout
    r = run("--user", "123456")
    assert r.returncode == 2 and "unknown USER_ID 123456" in r.stderr
