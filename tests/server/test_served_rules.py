"""Per-request rules (EXCLUDE_IDS, INCLUDE_IDS) and the cold start on a real server: one server,
its repository rebuilt and reloaded for each pipeline (ensemble, fused) and cold start
(popularity, refuse). The lists equal the offline ones under the same rules (serving/rules.py
top_k_allowed over the exported networks' ONNX Runtime outputs), on gRPC and HTTP."""
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import tritonclient.grpc as grpcclient

from builder.config import TrainConfig
from builder.models.popularity import item_counts
from builder.presets import preset
from builder.repository import Tuning, write_repository
from client import RecommenderClient, RequestError
from conftest import train_and_export
from server.launcher import TritonServer
from serving.contract import MAX_RULE_IDS
from serving.fallback import with_popularity_fallback
from serving.rules import rule_mask, top_k_allowed
from test_serving import onnx_outputs

pytestmark = pytest.mark.slow

EMPTY_USER = 0     # the row whose training ratings are taken out: a known user with no history
UNKNOWN_USER = 999_999
K = 10


@pytest.fixture(scope="module")
def data(u1):
    """u1 with user 1's training ratings removed (u1 has no user without any)."""
    keep = np.ones(u1.train.shape[0], np.float32)
    keep[EMPTY_USER] = 0
    train = (sp.diags(keep) @ u1.train).tocsr()
    train.eliminate_zeros()
    return replace(u1, train=train)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("rules-runs")
    config = TrainConfig(device="cpu").updated(**preset("ease"))
    ranker, _ = train_and_export(data, root / "ranker", config)
    rater, _ = train_and_export(data, root / "rater", TrainConfig(model="sae", hidden=[16, 8], epochs=2,
                                                                   batch_size=64, device="cpu"))
    return ranker, rater, config.implicit_threshold


class Served:
    """One server over one repository, rebuilt to a pipeline and cold start on demand."""

    def __init__(self, server, repo, runs):
        self.server, self.repo, self.runs, self.now = server, repo, runs, None

    def serve(self, pipeline: str, cold_start: str = "popularity") -> TritonServer:
        if self.now != (pipeline, cold_start):
            ranker, rater, _ = self.runs
            write_repository(ranker, self.repo, ["onnx"], Tuning(pipeline=pipeline), rating_run=rater,
                             cold_start=cold_start)
            for model in ("preprocess", "postprocess", "recommend"):
                self.server.load_model(model)
            self.now = (pipeline, cold_start)
        return self.server


@pytest.fixture(scope="module")
def served(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    ranker, rater, _ = runs
    write_repository(ranker, root / "repo", ["onnx"], rating_run=rater)
    with TritonServer(root / "repo", build_dir=root / "build") as server:
        s = Served(server, root / "repo", runs)
        s.now = ("ensemble", "popularity")
        yield s


def _url(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def _offline(data, runs, x, exclude, include):
    """The offline lists of rows x [rows, n_items] under the rules (raw id lists; include None:
    no rule): (top, SCORES, PREDICTED_RATINGS), the popularity fallback as evaluation ranks it."""
    ranker, rater, threshold = runs
    popularity = item_counts(data.train)
    by = with_popularity_fallback(onnx_outputs(ranker, x), x, threshold, popularity)
    ids = np.asarray(data.item_ids)
    col = lambda raw: np.searchsorted(ids, [i for i in raw if i in set(ids.tolist())])  # noqa: E731
    blocked = rule_mask(data.n_items, [col(e) for e in exclude], [None if i is None else col(i) for i in include])
    top = top_k_allowed(by, x != 0, blocked, K)
    predicted = np.clip(onnx_outputs(rater, x), *data.scale)
    predicted[~x.any(axis=1)] = np.nan   # a row that rated nothing: no prediction (serving.lists)
    at = lambda a: np.take_along_axis(a, np.maximum(top, 0), axis=1)  # noqa: E731
    return top, at(by), at(predicted)


def _assert_row(rec, top, scores, predicted, ids, source):
    n = int((top >= 0).sum())
    assert rec.item_ids == ids[top[:n]].tolist()
    assert rec.n_recommended == n and rec.source == source
    np.testing.assert_allclose(rec.scores, scores[:n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.predicted_ratings, predicted[:n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_rules_and_cold_start_equal_offline_on_both_protocols(served, data, runs, pipeline):
    server = served.serve(pipeline)
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("recommend", as_json=True)["config"]
    assert config.get("platform") == "ensemble" if pipeline == "ensemble" else config.get("backend") == "python"
    ids = np.asarray(data.item_ids)
    rng = np.random.default_rng(3)
    users = np.flatnonzero(np.diff(data.test.indptr) > 0)[1:6]
    exclude = [rng.choice(ids, 20, replace=False).tolist() + [-7] for _ in users]
    include = [None, rng.choice(ids, 30, replace=False).tolist() + [-8], None, ids[[4, 9, 30, 77]].tolist(), None]
    exclude[3] = [int(ids[9])]   # of the four included, one excluded: three come back
    x = data.train[users].toarray().astype(np.float32)
    top, scores, predicted = _offline(data, runs, x, exclude, include)
    n = (top >= 0).sum(axis=1)
    assert n[[0, 1, 2, 4]].tolist() == [K] * 4 and n[3] <= 3   # four included, one of them excluded
    # Cold starts: an unknown user and a known one with no training ratings, one with a rule.
    cold_x = np.zeros((2, data.n_items), np.float32)
    cold_rules = [ids[np.argsort(-item_counts(data.train), kind="stable")[:2]].tolist(), []]
    ctop, cscores, cpredicted = _offline(data, runs, cold_x, cold_rules, [None, None])
    for protocol in ("grpc", "http"):
        rc = RecommenderClient(_url(server, protocol), protocol)
        for j, u in enumerate(users):
            rec = rc.recommend(user_id=int(data.user_ids[u]), k=K, exclude=exclude[j], include=include[j])
            _assert_row(rec, top[j], scores[j], predicted[j], ids, "model")
            assert rec.unknown_items == (j != 3) + (j == 1)
        for j, uid in enumerate((UNKNOWN_USER, int(data.user_ids[EMPTY_USER]))):
            rec = rc.recommend(user_id=uid, k=K, exclude=cold_rules[j] or None)
            _assert_row(rec, ctop[j], cscores[j], cpredicted[j], ids, "popularity")
        with pytest.raises(RequestError, match=f"EXCLUDE_IDS has {MAX_RULE_IDS + 1} ids per row.*MAX_RULE_IDS"):
            rc.recommend(user_id=1, exclude=list(range(1, MAX_RULE_IDS + 2)))
        # Old clients send no rules and read no SOURCE: the same lists as before.
        assert rc.recommend(user_id=int(data.user_ids[users[0]]), k=K).item_ids == \
            rc.recommend(user_id=int(data.user_ids[users[0]]), k=K, exclude=[]).item_ids
    # Several new users in one request, the rule rows padded (-1): each row under its own rules.
    hist = [data.train[u] for u in users[:2]]
    width = max(h.nnz for h in hist)
    items, ratings = np.full((2, width), -1, np.int64), np.zeros((2, width), np.float32)
    for j, h in enumerate(hist):
        items[j, :h.nnz], ratings[j, :h.nnz] = ids[h.indices], h.data
    ex = np.full((2, 21), -1, np.int64)
    ex[0], ex[1, :5] = exclude[0], exclude[1][:5]
    inc = np.full((2, 31), -1, np.int64)
    inc[1] = include[1]
    tensors = []
    for name, arr, dt in (("ITEM_IDS", items, "INT64"), ("RATINGS", ratings, "FP32"), ("EXCLUDE_IDS", ex, "INT64"),
                          ("INCLUDE_IDS", inc, "INT64"), ("TOP_K", np.full((2, 1), K, np.int32), "INT32")):
        t = grpcclient.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    got = grpcclient.InferenceServerClient(server.grpc_url).infer("recommend", tensors)
    mtop, _, _ = _offline(data, runs, x[:2], [exclude[0], exclude[1][:5]], [None, include[1]])
    assert got.as_numpy("RECOMMENDED_IDS").tolist() == ids[mtop].tolist()
    assert got.as_numpy("SOURCE")[:, 0].tolist() == [b"model", b"model"]


def test_cli_rules_and_cold_start(served, data, tmp_path):
    server = served.serve(served.now[0])
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url", server.grpc_url, *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    (tmp_path / "include.txt").write_text("1\n2\n\n3\n")
    # A user who rated none of items 1-3: of those, 1 and 3 are allowed.
    user = next(u for u in range(1, data.train.shape[0]) if not set(data.train[u].indices) & {0, 1, 2})
    r = run("--user", str(int(data.user_ids[user])), "--exclude", "2", "--include-file", str(tmp_path / "include.txt"))
    assert r.returncode == 0, r.stderr
    assert "only 2 of 10 recommended" in r.stdout and "that the rules allow" in r.stdout
    r = run("--user", str(UNKNOWN_USER), "-k", "3")
    assert r.returncode == 0 and "the most popular items" in r.stdout


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_a_repository_built_to_refuse_cold_starts_answers_400(served, data, pipeline):
    server = served.serve(pipeline, "refuse")
    for protocol, status in (("grpc", "StatusCode.INVALID_ARGUMENT"), ("http", "400")):
        rc = RecommenderClient(_url(server, protocol), protocol)
        with pytest.raises(RequestError, match=f"unknown USER_ID {UNKNOWN_USER}") as e:
            rc.recommend(user_id=UNKNOWN_USER)
        assert e.value.status == status
        empty = int(data.user_ids[EMPTY_USER])
        with pytest.raises(RequestError, match=f"user {empty} has no ratings in the training data"):
            rc.recommend(user_id=empty)
        assert rc.recommend(user_id=int(data.user_ids[5])).source == "model"


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_every_test_user_with_random_rules_equals_a_brute_force_sort(served, data, runs, pipeline):
    """Every u1 test user, each with a random exclude set and half of them with a random allow set
    (1 to 400 items, some smaller than K once their rated items are masked): the served list is
    the offline one under the same rules on gRPC and HTTP, never holds an excluded item or one
    outside the allow set, and is K long exactly while K items are allowed."""
    server = served.serve(pipeline)
    ids = np.asarray(data.item_ids)
    rng = np.random.default_rng(11)
    users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    users = users[users != EMPTY_USER]
    exclude = [rng.choice(ids, rng.integers(0, 50), replace=False).tolist() for _ in users]
    include = [None if rng.random() < 0.5 else rng.choice(ids, rng.integers(1, 400), replace=False).tolist()
               for _ in users]
    x = data.train[users].toarray().astype(np.float32)
    top, scores, predicted = _offline(data, runs, x, exclude, include)
    rated = [set(ids[np.flatnonzero(row)].tolist()) for row in x]
    allowed = [len((set(ids.tolist()) if inc is None else set(inc)) - set(exc) - seen)
               for exc, inc, seen in zip(exclude, include, rated)]
    assert min(allowed) < K <= max(allowed), "the draw covers short and full lists"
    for protocol in ("grpc", "http"):
        rc = RecommenderClient(_url(server, protocol), protocol)
        for j, u in enumerate(users):
            rec = rc.recommend(user_id=int(data.user_ids[u]), k=K, exclude=exclude[j] or None, include=include[j])
            _assert_row(rec, top[j], scores[j], predicted[j], ids, "model")
            assert rec.n_recommended == min(K, allowed[j])
            assert not set(rec.item_ids) & (set(exclude[j]) | rated[j])
            assert include[j] is None or set(rec.item_ids) <= set(include[j])
