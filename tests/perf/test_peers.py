"""The serving peers (Ray Serve, LitServe, FastAPI + micro-batcher) on a real built repository:
their lists equal the offline ones (PyTorch forward + serving.ranking), one user or many per
request, under concurrent load, and a request the served pipeline refuses is a 400."""
import json

import numpy as np
import pytest
import torch

from builder.run_folder import load_run
from conftest import build_repository
from perf import load
from perf.peers import PEERS
from perf.peers.core import Recommender, RequestError, parse_body
from perf.peers.fastapi_batcher import MicroBatcher
from perf.peers.launch import Peer, recommend
from serving.ranking import top_k_unrated

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(u1, tmp_path_factory):
    run, repo, _ = build_repository(u1, tmp_path_factory.mktemp("peers"))
    return run, repo


def offline(run, u1, rows, k=10):
    """The offline lists of training rows `rows`: raw item ids and scores, best first."""
    x = u1.train[rows].toarray().astype(np.float32)
    with torch.no_grad():
        pred = load_run(run)[1](torch.from_numpy(x)).numpy()
    top = top_k_unrated(pred, x != 0, k)
    return [(u1.item_ids[t[t >= 0]].tolist(), pred[i, t[t >= 0]]) for i, t in enumerate(top)]


def fold_in(u1, row):
    r = u1.train[row]
    return {"item_ids": u1.item_ids[r.indices].tolist(), "ratings": r.data.astype(float).tolist()}


def check_lists(answer, expected):
    assert len(answer["users"]) == len(expected)
    for got, (ids, scores) in zip(answer["users"], expected):
        assert got["item_ids"] == ids
        np.testing.assert_allclose(got["scores"], scores, rtol=1e-4, atol=1e-5)
        assert len(got["titles"]) == len(ids) and all(isinstance(t, str) and t for t in got["titles"])


def test_request_body_becomes_the_contract_tensors():
    t = parse_body(b'{"users": [{"item_ids": [1, 2], "ratings": [5, 4]}, {"item_ids": [3], "ratings": [2]}], "k": 5}')
    assert t["ITEM_IDS"].tolist() == [[1, 2], [3, -1]] and t["RATINGS"].tolist() == [[5, 4], [2, 0]]
    assert t["TOP_K"].tolist() == [[5], [5]] and "USER_ID" not in t
    with pytest.raises(RequestError, match="not JSON"):
        parse_body(b"{nope")
    with pytest.raises(RequestError, match="for every user"):
        parse_body({"users": [{"user_id": 1}, {"item_ids": [1], "ratings": [3]}]})
    with pytest.raises(RequestError, match="item_ids has 2 entries but ratings has 1"):
        parse_body({"item_ids": [1, 2], "ratings": [3]})


def test_recommender_matches_offline_and_refuses_alone(built, u1):
    run, repo = built
    rows = np.flatnonzero(np.diff(u1.train.indptr) > 0)[:5]
    rec = Recommender(repo, threads=1)
    good = parse_body({"users": [fold_in(u1, r) for r in rows]})
    bad = parse_body({"user_id": 10**9})
    by_id = parse_body({"user_id": int(u1.user_ids[rows[0]])})
    out = rec.recommend([good, bad, by_id])
    check_lists(out[0], offline(run, u1, rows))
    assert isinstance(out[1], RequestError) and "unknown USER_ID" in str(out[1])
    check_lists(out[2], offline(run, u1, rows[:1]))   # a known user's history is the training row


async def _batched(batcher, items):
    import asyncio
    return await asyncio.gather(*(batcher.submit(i) for i in items))


def test_micro_batcher_groups_waiting_calls():
    import asyncio
    seen = []
    batcher = MicroBatcher(lambda items: seen.append(len(items)) or [i * 2 for i in items], 4, 0.05)
    assert asyncio.run(_batched(batcher, range(10))) == [i * 2 for i in range(10)]
    assert max(seen) == 4 and sum(seen) == 10   # batches of up to four, every call answered once


# Ray's start costs tens of seconds on 2 cores: one test starts it.
@pytest.mark.parametrize("kind", PEERS)
def test_peer_serves_the_offline_lists(built, u1, kind, tmp_path):
    run, repo = built
    rows = np.flatnonzero(np.diff(u1.train.indptr) > 0)[:64]
    with Peer(kind, repo, threads=1, max_batch_size=8, batch_wait_timeout_s=0.002, log=tmp_path / "peer.log") as p:
        expected = offline(run, u1, rows)
        for i in range(2):   # one user per request: fold-in, then a known user by id
            status, answer = recommend(p.port, fold_in(u1, rows[i]))
            assert status == 200, answer
            check_lists(answer, expected[i:i + 1])
        status, answer = recommend(p.port, {"user_id": int(u1.user_ids[rows[2]]), "k": 10})
        assert status == 200 and answer["users"][0]["item_ids"] == expected[2][0]
        status, answer = recommend(p.port, {"users": [fold_in(u1, r) for r in rows], "k": 10})  # 64 users
        assert status == 200, answer
        check_lists(answer, expected)
        status, answer = recommend(p.port, {"user_id": 10**9})
        assert status == 400 and "unknown USER_ID" in answer["error"]
        # Concurrent requests are batched together; a refused one never fails its batch-mates.
        bodies = [json.dumps(fold_in(u1, r)).encode() for r in rows[:8]]
        bodies.append(json.dumps({"item_ids": [int(u1.item_ids[0])], "ratings": [99.0]}).encode())
        res = load.drive("127.0.0.1", p.port, "/recommend", bodies, 4, 1.0)
        assert res.requests > 0 and res.errors > 0 and "outside scale" in res.first_error
        assert res.errors < res.requests / 4   # only the bad body (one in nine) fails, not its batch
        assert p.rss_mb() > 50


def test_naive_service_answers_several_users_in_one_request(built, u1):
    """The hand-written baseline takes the 64-users-per-request shape too: one forward, the
    offline lists."""
    import threading

    from perf.naive_service import serve
    run, _ = built
    rows = np.flatnonzero(np.diff(u1.train.indptr) > 0)[:3]
    httpd = serve(run, 0, threads=1)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        status, answer = recommend(httpd.server_address[1], {"users": [fold_in(u1, r) for r in rows], "k": 10})
    finally:
        httpd.shutdown()
    assert status == 200
    assert [u["item_ids"] for u in answer["users"]] == [ids for ids, _ in offline(run, u1, rows)]
