"""Serving in the data's own ids: ML-100K (split u1) with string ids (users u1, u2 ..., items
sku-1, sku-2 ...) against the same data with its integer ids, an EASE ranker trained on each,
on two real servers. Both pipelines (the ensemble, then the fused model after `apply_tuning`
and a reload), both protocols, through the SDK; the served lists are the same after mapping
the ids. Plus the string-id checks that only a live server shows (tensor types, padding,
errors with batch-mates, perf_analyzer's BYTES input data)."""
import queue

import numpy as np
import pytest
import scipy.sparse as sp
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.config import TrainConfig
from builder.data.dataset import Dataset
from builder.repository import Tuning, apply_tuning, write_repository
from client import RecommenderClient, RequestError
from conftest import TESTS_COLD_START, shared_run, train_and_export
from perf import analyzer, inputs
from server.launcher import TritonServer

pytestmark = pytest.mark.slow

N_USERS = 200
INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


def string_twin(ds: Dataset) -> Dataset:
    """`ds` with user n renamed "u<n>" and item n "sku-<n>": ids sorted as strings (another
    order than the integers'), rows, columns and titles permuted to match."""
    users = np.array([f"u{n}" for n in ds.user_ids.tolist()])
    items = np.array([f"sku-{n}" for n in ds.item_ids.tolist()])
    uo, io = np.argsort(users, kind="stable"), np.argsort(items, kind="stable")

    def permuted(m):
        m = sp.csr_matrix(m[uo][:, io])
        m.sort_indices()
        return m
    return Dataset(permuted(ds.train), permuted(ds.test), users[uo], items[io], [ds.titles[i] for i in io],
                   ds.scale, ds.fingerprint, ds.name)


@pytest.fixture(scope="module")
def servers(u1, tmp_path_factory):
    """{"int": server, "str": server}: EASE trained on each form of the data, the ensemble served."""
    root = tmp_path_factory.mktemp("string-ids")
    out = {}
    with _Both() as both:
        config = TrainConfig(model="ease", device="cpu")
        for kind, ds in (("int", u1), ("str", string_twin(u1))):   # the int run: the session's shared one
            run, _ = shared_run(ds, config) if kind == "int" else train_and_export(ds, root / kind / "run", config)
            write_repository(run, root / kind / "repo", ["onnx"], cold_start=TESTS_COLD_START)
            out[kind] = both.start(TritonServer(root / kind / "repo", build_dir=root / "build"))
        yield out


class _Both:
    """Stops every server it started, whatever fails."""

    def __init__(self):
        self.started = []

    def start(self, server: TritonServer) -> TritonServer:
        self.started.append(server.start())
        return server

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s in self.started:
            s.stop()


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def pipeline(servers, request):
    """The ensemble first; then both repositories switched to the fused model and reloaded."""
    if request.param == "fused":
        for server in servers.values():
            apply_tuning(server.repository, Tuning(pipeline="fused", ort_threads=2, ort_spinning=False,
                                                   step_queue_delay_us=0))
            server.load_model("recommend")
    return request.param


def _url(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def test_configs_type_the_ids_by_the_catalogue(servers, pipeline):
    """USER_ID, ITEM_IDS and RECOMMENDED_IDS are TYPE_STRING where the ids are strings,
    TYPE_INT64 otherwise, in every config that has them; the SDK reads the same from metadata."""
    for kind, server in servers.items():
        want = model_config_pb2.TYPE_STRING if kind == "str" else model_config_pb2.TYPE_INT64
        for model in ("preprocess", "postprocess", "recommend"):
            config = text_format.Parse((server.repository / model / "config.pbtxt").read_text(),
                                       model_config_pb2.ModelConfig())
            ids = [t for t in (*config.input, *config.output)
                   if t.name in ("USER_ID", "ITEM_IDS", "RECOMMENDED_IDS")]
            assert ids and all(t.data_type == want for t in ids), (model, ids)
        served = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("recommend").config
        assert (served.backend, served.platform) == (("python", "") if pipeline == "fused" else ("", "ensemble"))
        types = RecommenderClient(server.grpc_url).id_types()
        assert types == ({"USER_ID": "BYTES", "ITEM_IDS": "BYTES"} if kind == "str"
                         else {"USER_ID": "INT64", "ITEM_IDS": "INT64"})


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_string_ids_serve_the_integer_lists(servers, pipeline, u1, protocol):
    """200 test users, by USER_ID and by their training history (the string side sends items
    alone, without RATINGS; the integer side sends the ratings: EASE reads only which items):
    the same items, in the same order, with the same scores and titles, once ids are mapped."""
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)[:N_USERS]
    ints, strs = (RecommenderClient(_url(servers[k], protocol), protocol) for k in ("int", "str"))
    int_users = u1.user_ids[users].tolist()
    histories = [u1.train[u] for u in users]
    by_int = ints.recommend_many(user_ids=int_users, k=10)
    by_int += ints.recommend_many(ratings=[dict(zip(u1.item_ids[h.indices].tolist(), h.data.tolist()))
                                           for h in histories], k=10)
    by_str = strs.recommend_many(user_ids=[f"u{n}" for n in int_users], k=10)
    by_str += strs.recommend_many(items=[[f"sku-{n}" for n in u1.item_ids[h.indices].tolist()] for h in histories],
                                  k=10)
    assert len(by_int) == len(by_str) == 2 * N_USERS
    for a, b in zip(by_int, by_str):
        assert all(isinstance(i, str) for i in b.item_ids) and all(isinstance(i, int) for i in a.item_ids)
        assert b.item_ids == [f"sku-{n}" for n in a.item_ids]
        assert b.titles == a.titles and b.n_recommended == a.n_recommended == 10
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bytes_tensors_on_the_wire_and_b_empty_padding(servers, pipeline, u1, protocol):
    """A raw request: USER_ID and ITEM_IDS (without RATINGS) as BYTES, RECOMMENDED_IDS back as BYTES; asking for
    more items than are left unrated pads the answer with b"" as the integer one pads with -1;
    unknown items are counted."""
    mod = grpcclient if protocol == "grpc" else httpclient
    results = {}
    for kind, server in servers.items():
        client = mod.InferenceServerClient(_url(server, protocol))
        if kind == "str":
            user, items = np.array([[b"u13"]], np.object_), np.array([[b"sku-50", b"sku-nope"]], np.object_)
            dt = "BYTES"
        else:
            user, items, dt = np.array([[13]], np.int64), np.array([[50, 999_999]], np.int64), "INT64"
        tensors = []
        for name, arr, t in (("USER_ID", user, dt), ("ITEM_IDS", items, dt),
                             ("TOP_K", np.array([[u1.n_items]], np.int32), "INT32")):
            x = mod.InferInput(name, list(arr.shape), t)
            x.set_data_from_numpy(arr)
            tensors.append(x)
        results[kind] = client.infer("recommend", tensors)
    ints, strs = (results[k].as_numpy("RECOMMENDED_IDS")[0] for k in ("int", "str"))
    n = int(results["str"].as_numpy("N_RECOMMENDED")[0, 0])
    assert n == int(results["int"].as_numpy("N_RECOMMENDED")[0, 0]) < u1.n_items
    assert int(results["str"].as_numpy("UNKNOWN_ITEMS")[0, 0]) == 1
    # The same items; the same order at the top (further down, items of equal scores are ordered
    # by column, and the two catalogues' columns are in different orders).
    assert strs.dtype == np.object_ and {s.decode() for s in strs[:n]} == {f"sku-{i}" for i in ints[:n]}
    assert [s.decode() for s in strs[:10]] == [f"sku-{i}" for i in ints[:10]]
    assert set(strs[n:].tolist()) == {b""} and set(ints[n:].tolist()) == {-1}


def _raw(mod, user: bytes, k: int = 5):
    out = []
    for name, arr, dt in (("USER_ID", np.array([[user]], np.object_), "BYTES"),
                          ("TOP_K", np.array([[k]], np.int32), "INT32")):
        t = mod.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_string_ids_are_the_clients_mistake(servers, pipeline, protocol):
    """Empty, non-UTF-8 and unknown user ids, an integer id to the string model, an id the
    string model cannot hold: 400 / INVALID_ARGUMENT naming the problem; the server keeps serving."""
    mod = grpcclient if protocol == "grpc" else httpclient
    client = mod.InferenceServerClient(_url(servers["str"], protocol))
    for user, message in ((b"", "USER_ID is empty"), (b"u\xff1", "not UTF-8"),
                          (b"u999999", "unknown USER_ID 'u999999'")):
        with pytest.raises(Exception, match=message) as e:
            client.infer("recommend", _raw(mod, user))
        assert e.value.status() == INVALID[protocol]
    wrong = mod.InferInput("USER_ID", [1, 1], "INT64")
    wrong.set_data_from_numpy(np.array([[1]], np.int64))
    with pytest.raises(Exception, match="USER_ID") as e:
        client.infer("recommend", [wrong])
    assert e.value.status() == INVALID[protocol]
    rc = RecommenderClient(_url(servers["str"], protocol), protocol)
    with pytest.raises(RequestError, match="unknown USER_ID '42'"):
        rc.recommend(user_id=42)   # an int to a string catalogue is sent as "42"
    with pytest.raises(ValueError, match="integers"):
        RecommenderClient(_url(servers["int"], protocol), protocol).recommend(items=["sku-50"])
    assert len(rc.recommend(user_id="u1", k=5).item_ids) == 5


def test_bad_string_requests_do_not_fail_their_batch_mates(servers, pipeline):
    """Good and bad string requests in flight together (dynamic batching groups them): only the
    bad fail, each with its own reason (empty, not UTF-8, unknown, more items than allowed)."""
    from serving.contract import MAX_ITEMS_PER_REQUEST
    client = grpcclient.InferenceServerClient(servers["str"].grpc_url)
    too_many = grpcclient.InferInput("ITEM_IDS", [1, MAX_ITEMS_PER_REQUEST + 1], "BYTES")
    too_many.set_data_from_numpy(np.array([[f"sku-{i}".encode() for i in range(MAX_ITEMS_PER_REQUEST + 1)]],
                                          np.object_))
    requests = [(_raw(grpcclient, b"u1"), None), (_raw(grpcclient, b""), "USER_ID is empty"),
                (_raw(grpcclient, b"u2"), None), (_raw(grpcclient, b"\xc3\x28"), "not UTF-8"),
                (_raw(grpcclient, b"u3"), None), (_raw(grpcclient, b"u0"), "unknown USER_ID 'u0'"),
                ([too_many], "the limit is"), (_raw(grpcclient, b"u4"), None)]
    done = queue.Queue()
    for i, (tensors, _) in enumerate(requests):
        client.async_infer("recommend", tensors, callback=lambda result, error, i=i: done.put((i, result, error)))
    results = {i: (r, e) for i, r, e in (done.get(timeout=60) for _ in requests)}
    for i, (_, message) in enumerate(requests):
        result, error = results[i]
        if message is None:
            assert error is None and [x.decode() for x in result.as_numpy("RECOMMENDED_IDS")[0]][0].startswith("sku-")
        else:
            assert error is not None and message in str(error) and error.status() == INVALID["grpc"]


def test_perf_analyzer_sends_string_ids(servers, pipeline, u1, tmp_path):
    """perf_analyzer --input-data with BYTES ids (strings in its JSON): by user and by history."""
    ds = string_twin(u1)
    users = inputs.held_out_users(ds.test, ds.train, 8)
    for name, data in (("user_ids", inputs.ensemble_user_data(ds.user_ids, users)),
                       ("ratings", inputs.ensemble_ratings_data(ds.train, ds.item_ids, users))):
        path = inputs.write(data, tmp_path / f"{name}.json")
        assert isinstance(data["data"][0][("USER_ID" if name == "user_ids" else "ITEM_IDS")]["content"][0], str)
        run = analyzer.run("recommend", servers["str"].grpc_url, "grpc", path, tmp_path / f"{name}.csv",
                           concurrency="1", interval_ms=300)
        (row,) = run.rows
        assert row.throughput > 0


def test_cli_recommend_takes_string_ids(servers):
    """`aerec recommend --user u42`, `--seen sku-50 --seen sku-172` (a history without ratings)
    and `--rate sku-50=5` against the string catalogue: tables of sku- ids."""
    import subprocess
    import sys
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url",  # noqa: E731
                                     servers["str"].grpc_url, "-k", "3", *a], capture_output=True, text=True,
                                    timeout=120)
    for args in (("--user", "u42"), ("--seen", "sku-50", "--seen", "sku-172", "--seen", "sku-nope"),
                 ("--rate", "sku-50=5", "--rate", "sku-172=4")):
        r = run(*args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("sku-") >= 3, r.stdout
    assert "1 seen item id(s) unknown" in run("--seen", "sku-50", "--seen", "sku-nope").stdout
    r = run("--user", "u999999")
    assert r.returncode == 2 and "unknown USER_ID 'u999999'" in r.stderr


def test_perf_load_tools_take_string_ids(servers, u1):
    """perf's own generators on the string catalogue: the soak's requests (valid ones succeed,
    invalid ones get their error), Triton's KServe JSON bodies (BYTES ids as JSON strings, one
    user and 64 padded with ""), and a serving peer's pipeline (JSON string ids in and out) giving
    the served list."""
    import http.client
    import json

    from perf import load, soak
    from perf.peers.core import Recommender
    ds = string_twin(u1)
    valid, invalid = soak.mixed_requests(ds, n_valid=40)
    outcomes = soak.drive(servers["str"].grpc_url, soak.interleave(valid, invalid), concurrency=4, seconds=2)
    assert outcomes and all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
    users = inputs.held_out_users(ds.test, ds.train, 70)
    requests = [(ds.item_ids[ds.train[u].indices].tolist(), ds.train[u].data.tolist()) for u in users]
    host, port = servers["str"].http_url.split(":")
    for body in (load.triton_bodies(requests[:1])[0], load.triton_batch_bodies(requests, 64)[0]):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v2/models/recommend/infer", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        answer = json.loads(r.read())
        assert r.status == 200, answer
        ids = next(o for o in answer["outputs"] if o["name"] == "RECOMMENDED_IDS")
        assert ids["datatype"] == "BYTES" and ids["data"][0].startswith("sku-")
    status, answer = Recommender(servers["str"].repository).answer(
        json.dumps({"item_ids": requests[0][0], "ratings": requests[0][1], "k": 10}))
    served = RecommenderClient(servers["str"].grpc_url).recommend(ratings=dict(zip(*requests[0])), k=10)
    assert status == 200 and answer["users"][0]["item_ids"] == served.item_ids
    # The hand-written baseline (perf/naive_service.py) on the string run: the same top 10.
    import threading

    from perf import naive_service
    from server.launcher import free_port
    import torch
    threads = torch.get_num_threads()   # serve() sets the process's torch threads: restored below
    naive = naive_service.serve(servers["str"].repository.parent / "run", free_port())
    threading.Thread(target=naive.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", naive.server_address[1], timeout=30)
        conn.request("POST", "/recommend", load.naive_bodies(requests[:1])[0])
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["item_ids"] == served.item_ids
    finally:
        naive.shutdown()
        naive.server_close()
        torch.set_num_threads(threads)


def test_similar_speaks_the_catalogues_ids(servers, u1):
    """`similar` (beside the ranker in both repositories; either recommend pipeline): string
    seeds give the integer lists, ids mapped; an unknown string seed is refused, quoted."""
    ints, strs = (RecommenderClient(servers[k].grpc_url) for k in ("int", "str"))
    for seeds in ([50], [1, 2], [181, 172, 50], [300], [1000]):
        a = ints.similar(seeds, k=10)
        b = strs.similar([f"sku-{n}" for n in seeds], k=10)
        assert b.item_ids == [f"sku-{n}" for n in a.item_ids] and b.titles == a.titles
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(RequestError, match="unknown item 'sku-nope'"):
        strs.similar(["sku-50", "sku-nope"])
