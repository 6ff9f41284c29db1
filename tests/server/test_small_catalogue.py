"""A six-movie catalogue (tests/fixtures/six_movies: 40 users, MovieLens-1M's .dat format)
served by a ranker (EASE) and a rater in both pipelines, over gRPC and HTTP: lists longer than
a user's unrated items, a user whose only rating fell in the test part, the default TOP_K, and
several new users padded into one request."""
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.data.sources import load_dataset
from serving.ranking import top_k_unrated
from builder.repository import Tuning, write_repository
from client import RecommenderClient, RequestError
from conftest import FIXTURES, TESTS_COLD_START, six_movie_runs
from server.launcher import TritonServer

pytestmark = pytest.mark.slow

DATA = str(FIXTURES / "six_movies" / "ratings.dat")
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
NO_HISTORY = "user 113 has no ratings in the training data: send ITEM_IDS with RATINGS"


@pytest.fixture(scope="module")
def six():
    """With --split random (seed 0), user 113's only rating falls in the test part."""
    return load_dataset(DATA, "random", 0)


@pytest.fixture(scope="module")
def runs(six, tmp_path_factory):
    return six_movie_runs(six, tmp_path_factory.mktemp("six-runs"))


@dataclass
class Served:
    server: TritonServer
    ranker: Path
    rater: Path


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def served(runs, tmp_path_factory, request):
    root = tmp_path_factory.mktemp(f"six-{request.param}")
    ranker, rater = runs
    write_repository(ranker, root / "repo", ["onnx"], Tuning(pipeline=request.param), rating_run=rater,
                     cold_start=TESTS_COLD_START)
    with TritonServer(root / "repo", build_dir=root / "build") as server:
        yield Served(server, ranker, rater)


def _client(server, protocol):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def _infer(mod, client, **arrays):
    dtypes = {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}
    inputs = []
    for name, arr in arrays.items():
        t = mod.InferInput(name, list(arr.shape), dtypes[arr.dtype])
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return client.infer("recommend", inputs)


def _scores(run, x):
    s = ort.InferenceSession(str(run / "export" / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_asking_for_more_than_the_unrated_items_pads_and_never_returns_a_rated_one(served, six, protocol):
    """A new user who rated movie 1 asks for all 6 movies: the 5 others, ranked as ranking.py
    ranks them offline, then one padding slot (-1, NaN, b""), N_RECOMMENDED 5; a known user
    asking for 6 gets 6 minus their training ratings the same way."""
    mod, client = _client(served.server, protocol)
    user = 1
    row = six.train[int(six.user_index([user])[0])]
    x = np.zeros((2, six.n_items), np.float32)
    x[0, 0] = 5.0                                   # movie 1 is column 0
    x[1, row.indices] = row.data
    top = top_k_unrated(_scores(served.ranker, x), x != 0, 6)
    for j, r in enumerate((_infer(mod, client, ITEM_IDS=np.array([[1]], np.int64),
                                  RATINGS=np.array([[5.0]], np.float32), TOP_K=np.array([[6]], np.int32)),
                           _infer(mod, client, USER_ID=np.array([[user]], np.int64),
                                  TOP_K=np.array([[6]], np.int32)))):
        n = int((x[j] == 0).sum())
        ids, scores = r.as_numpy("RECOMMENDED_IDS")[0], r.as_numpy("SCORES")[0]
        ratings, titles = r.as_numpy("PREDICTED_RATINGS")[0], r.as_numpy("TITLES")[0]
        assert r.as_numpy("N_RECOMMENDED").tolist() == [[n]] and n < 6
        assert ids.tolist() == [int(six.item_ids[c]) if c >= 0 else -1 for c in top[j]]
        assert ids[n:].tolist() == [-1] * (6 - n) and not set(ids[:n]) & set(six.item_ids[x[j] != 0])
        assert np.isnan(scores[n:]).all() and np.isnan(ratings[n:]).all() and not np.isnan(scores[:n]).any()
        assert titles[n:].tolist() == [b""] * (6 - n) and b"" not in titles[:n].tolist()
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    rec = RecommenderClient(url, protocol).recommend(ratings={1: 5.0}, k=6)
    assert (rec.n_recommended, rec.k, rec.complete, len(rec.item_ids), len(rec.predicted_ratings)) == (5, 6, False, 5,
                                                                                                    5)
    assert 1 not in rec.item_ids and "Toy Story (1995)" not in rec.titles


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_user_without_training_history_is_refused_like_an_empty_fold_in(served, protocol):
    mod, client = _client(served.server, protocol)
    for arrays in (dict(USER_ID=np.array([[113]], np.int64)),
                   dict(USER_ID=np.array([[1], [113]], np.int64)),       # ids only, batched
                   dict(USER_ID=np.array([[113]], np.int64), ITEM_IDS=np.array([[999]], np.int64),
                        RATINGS=np.array([[4.0]], np.float32))):          # only an unknown item sent
        with pytest.raises(Exception, match=NO_HISTORY) as e:
            _infer(mod, client, **arrays)
        assert e.value.status() == INVALID[protocol]
    # With ratings sent, the same user folds in like anyone.
    r = _infer(mod, client, USER_ID=np.array([[113]], np.int64), ITEM_IDS=np.array([[6]], np.int64),
               RATINGS=np.array([[4.0]], np.float32), TOP_K=np.array([[3]], np.int32))
    assert r.as_numpy("N_RECOMMENDED").tolist() == [[3]] and 6 not in r.as_numpy("RECOMMENDED_IDS")[0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_top_k_defaults_to_the_catalogue_when_smaller_and_unknown_user_is_named_first(served, protocol):
    mod, client = _client(served.server, protocol)
    r = _infer(mod, client, ITEM_IDS=np.array([[1, 2]], np.int64), RATINGS=np.array([[5.0, 3.0]], np.float32))
    assert r.as_numpy("RECOMMENDED_IDS").shape == (1, 6) and r.as_numpy("N_RECOMMENDED").tolist() == [[4]]
    for top_k in ({}, {"TOP_K": np.array([[50]], np.int32)}):
        with pytest.raises(Exception, match="unknown USER_ID 999") as e:
            _infer(mod, client, USER_ID=np.array([[999]], np.int64), **top_k)
        assert e.value.status() == INVALID[protocol]
    with pytest.raises(Exception, match="TOP_K must be in 1..6, got 50") as e:
        _infer(mod, client, USER_ID=np.array([[1]], np.int64), TOP_K=np.array([[50]], np.int32))
    assert e.value.status() == INVALID[protocol]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_several_new_users_in_one_request_are_padded(served, protocol):
    """Rows of different lengths padded with ITEM_IDS -1 or RATINGS 0: each row answers as its
    own request would; the SDK pads rating dicts the same way."""
    mod, client = _client(served.server, protocol)
    rows = [{1: 5.0}, {2: 4.0, 3: 1.0, 4: 5.0}, {5: 2.0, 6: 3.0}]
    items = np.array([[1, -1, -1], [2, 3, 4], [5, 6, 2]], np.int64)
    ratings = np.array([[5.0, 0.0, 0.0], [4.0, 1.0, 5.0], [2.0, 3.0, 0.0]], np.float32)  # row 3: item 2 rated 0
    k = np.full((3, 1), 4, np.int32)
    together = _infer(mod, client, ITEM_IDS=items, RATINGS=ratings, TOP_K=k)
    for j, r in enumerate(rows):
        alone = _infer(mod, client, ITEM_IDS=np.array([list(r)], np.int64),
                       RATINGS=np.array([list(r.values())], np.float32), TOP_K=k[:1])
        for name in ("RECOMMENDED_IDS", "N_RECOMMENDED", "UNKNOWN_ITEMS"):
            assert together.as_numpy(name)[j].tolist() == alone.as_numpy(name)[0].tolist(), name
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    rc = RecommenderClient(url, protocol)
    many = rc.recommend_many(ratings=rows, k=4)
    assert [m.item_ids for m in many] == [rc.recommend(ratings=r, k=4).item_ids for r in rows]
    assert [m.n_recommended for m in many] == [4, 3, 4]
    with pytest.raises(RequestError, match=NO_HISTORY):
        rc.recommend_many([1, 113], k=2, ratings=[{}, {}])


def test_cli_says_when_fewer_than_k_are_left(served):
    r = subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url", served.server.grpc_url,
                        "--rate", "1=5", "-k", "6"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "only 5 of 6 recommended" in r.stdout and "Toy Story" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url", served.server.grpc_url,
                        "--user", "113"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and NO_HISTORY in r.stderr
