"""A real Triton server (the embedded binary) serving the exported network, gRPC and HTTP."""
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.config import TrainConfig
from builder.export import ExportConfig, export_run
from builder.repository import RepositoryError, Tuning, write_repository
from builder.train import save_run, train
from server.launcher import TritonServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def served(u1, tmp_path_factory, request):
    """Every test below runs against both pipelines: the three-model ensemble and the fused one."""
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    config = TrainConfig(model="deeprec", hidden=[64], dropout=0.5, center=True, last_activation=False,
                         epochs=3, batch_size=64, device="cpu")
    result = train(config, u1, progress=False)
    run = save_run(result, u1, root / "run")
    export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
    repo = root / "model_repository"
    # The fused variant with the knobs the quick tuning tries for the lone user (two ONNX Runtime
    # threads that sleep when idle, no batching delay), so those configs are served for real.
    tuning = (Tuning(pipeline="fused", ort_threads=2, ort_spinning=False, step_queue_delay_us=0)
              if request.param == "fused" else Tuning())
    write_repository(run, repo, ["onnx"], tuning)
    with TritonServer(repo, build_dir=root / "build") as server:
        yield server, result.model.eval(), run, repo


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_matches_pytorch_on_200_test_users(served, u1, protocol):
    server, model, _, _ = served
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)[:200]
    x = u1.train[users].toarray().astype(np.float32)
    mod, url = (grpcclient, server.grpc_url) if protocol == "grpc" else (httpclient, server.http_url)
    client = mod.InferenceServerClient(url)
    inp = mod.InferInput("RATINGS", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("autoencoder_onnx", [inp]).as_numpy("PREDICTIONS")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= 1e-4


def test_new_build_adds_a_version_and_a_failed_build_keeps_the_old(served, tmp_path):
    _, _, run, repo = served
    copy = tmp_path / "repo"
    write_repository(run, copy, ["onnx"])
    assert write_repository(run, copy, ["onnx"])["models"] == {"autoencoder_onnx": 2, "preprocess": 2,
                                                              "postprocess": 2, "recommend": 1}
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(RepositoryError, match="model_int8.onnx missing"):
        write_repository(run, copy, ["onnx", "onnx_int8"])
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
    assert not any(p.name.startswith(".repo-") for p in tmp_path.iterdir())


def test_server_loads_configs_without_warnings(served):
    server, *_ = served
    log = server.log.read_text(errors="replace")
    assert "successfully loaded 'autoencoder_onnx'" in log
    config_warnings = [line for line in log.splitlines() if line.startswith("W") and "config" in line.lower()]
    assert config_warnings == []


def test_second_server_on_the_same_build_folder(served):
    """Two servers may share one backend folder (the stub is in use by the first)."""
    server, *_ = served
    with TritonServer(server.repository, build_dir=server.build_dir, log=server.log.with_name("second.log")) as two:
        assert two.ready() and server.ready()


# ---- the `recommend` ensemble ----------------------------------------------------------------

def _recommend(mod, client, user=None, items=None, ratings=None, k=10, dtype_items="INT64"):
    inputs = []
    def add(name, arr, dt):
        t = mod.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    if user is not None:
        add("USER_ID", np.array([[user]], np.int64), "INT64")
    if items is not None:
        add("ITEM_IDS", np.asarray([items], np.int64 if dtype_items == "INT64" else np.int32), dtype_items)
    if ratings is not None:
        add("RATINGS", np.asarray([ratings], np.float32), "FP32")
    add("TOP_K", np.array([[k]], np.int32), "INT32")
    r = client.infer("recommend", inputs)
    first = [r.as_numpy(n)[0] for n in ("RECOMMENDED_IDS", "SCORES", "TITLES")]
    return (*first, r.as_numpy("UNKNOWN_ITEMS")[0, 0])


def _client(server, protocol):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_top10_equals_offline_reference(served, u1, protocol):
    from builder.ranking import top_k_unrated
    server, model, _, _ = served
    mod, client = _client(server, protocol)
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)[:200]
    x = u1.train[users].toarray().astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    top = top_k_unrated(ref, x != 0, 10)
    for j, u in enumerate(users):
        ids, scores, titles, unknown = _recommend(mod, client, user=int(u1.user_ids[u]))
        assert ids.tolist() == u1.item_ids[top[j]].tolist()
        assert np.abs(scores - np.clip(ref[j, top[j]], 1, 5)).max() <= 1e-4
        assert titles[0].decode() == u1.titles[top[j][0]] and unknown == 0


def test_ratings_only_path_equals_user_id_path(served, u1):
    server, *_ = served
    mod, client = _client(server, "grpc")
    for u in np.flatnonzero(np.diff(u1.train.indptr) > 0)[:20]:
        row = u1.train[u]
        by_id = _recommend(mod, client, user=int(u1.user_ids[u]))
        by_ratings = _recommend(mod, client, items=u1.item_ids[row.indices].tolist(), ratings=row.data.tolist())
        assert by_id[0].tolist() == by_ratings[0].tolist()
        assert np.allclose(by_id[1], by_ratings[1])


BAD_REQUESTS = [
    (dict(user=999_999), "unknown USER_ID 999999"),
    (dict(items=[1, 2, 3], ratings=[4.0, 5.0]), "ITEM_IDS has 3 entries but RATINGS has 2"),
    (dict(items=[1, 2], ratings=[4.0, float("nan")]), "NaN or infinity"),
    (dict(items=[1, 2], ratings=[4.0, 9.0]), "rating 9 outside scale 1..5"),
    (dict(user=1, k=0), "TOP_K must be in 1..1682, got 0"),
    (dict(user=1, k=5000), "TOP_K must be in 1..1682, got 5000"),
    (dict(), "empty request"),
    (dict(items=[999_998], ratings=[4.0]), "no known items"),
    (dict(items=[1, 2], ratings=[4.0, 3.0], dtype_items="INT32"), "ITEM_IDS"),  # wrong dtype
]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("kwargs,message", BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_bad_request_gets_its_error_and_server_keeps_serving(served, protocol, kwargs, message):
    server, *_ = served
    mod, client = _client(server, protocol)
    with pytest.raises(Exception, match=message):
        _recommend(mod, client, **kwargs)
    ids, *_ = _recommend(mod, client, user=1, k=5)
    assert len(ids) == 5


def test_unknown_items_are_skipped_and_counted(served):
    server, *_ = served
    mod, client = _client(server, "grpc")
    ids, _, _, unknown = _recommend(mod, client, items=[50, 172, 999_999, 888_888], ratings=[5.0, 4.0, 3.0, 2.0])
    assert unknown == 2 and len(ids) == 10 and 50 not in ids.tolist()


def test_bad_request_does_not_fail_its_batch_mates(served):
    """Good and bad requests in flight together (dynamic batching groups them): only the bad fail."""
    import queue
    server, *_ = served
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def inputs(user):
        out = []
        for name, arr, dt in (("USER_ID", np.array([[user]], np.int64), "INT64"),
                              ("TOP_K", np.array([[5]], np.int32), "INT32")):
            t = grpcclient.InferInput(name, list(arr.shape), dt)
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    users = [1, 999_999, 2, 3, 888_888, 4, 5, 6]
    done = queue.Queue()
    for i, u in enumerate(users):
        client.async_infer("recommend", inputs(u), callback=lambda result, error, i=i: done.put((i, result, error)))
    results = dict((i, (r, e)) for i, r, e in (done.get(timeout=30) for _ in users))
    for i, u in enumerate(users):
        result, error = results[i]
        if u > 10_000:
            assert error is not None and f"unknown USER_ID {u}" in str(error)
        else:
            assert error is None and result.as_numpy("RECOMMENDED_IDS").shape == (1, 5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_one_request_may_carry_several_users(served, u1, protocol):
    """USER_ID [B, 1] in one request: B rows back, each equal to that user's own request."""
    server, *_ = served
    mod, client = _client(server, protocol)
    users = [int(u) for u in u1.user_ids[:16]]
    inputs = []
    for name, arr, dt in (("USER_ID", np.array(users, np.int64)[:, None], "INT64"),
                          ("TOP_K", np.full((len(users), 1), 7, np.int32), "INT32")):
        t = mod.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    ids = client.infer("recommend", inputs).as_numpy("RECOMMENDED_IDS")
    assert ids.shape == (16, 7)
    for j in (0, 5, 15):
        assert ids[j].tolist() == _recommend(mod, client, user=users[j], k=7)[0].tolist()
    # Mixed TOP_K in one request cannot make a rectangular answer: a clear error instead.
    inputs[1].set_data_from_numpy(np.arange(1, 17, dtype=np.int32)[:, None])
    with pytest.raises(Exception, match="TOP_K differs across the rows"):
        client.infer("recommend", inputs)


def test_apply_tuning_switches_the_pipeline(served, tmp_path):
    """`aerec repository --tuned` may pick the fused pipeline and back: same model files either way."""
    import shutil
    from builder.repository import apply_tuning
    _, _, _, repo = served
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    apply_tuning(copy, Tuning(pipeline="fused", ort_threads=1))
    config = (copy / "recommend" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "intra_op_thread_count" in config
    assert "allow_spinning" not in config  # ONNX Runtime's default unless asked
    apply_tuning(copy, Tuning(pipeline="fused", ort_threads=2, ort_spinning=False))
    config = (copy / "recommend" / "config.pbtxt").read_text()
    assert 'key: "session.intra_op.allow_spinning" value: { string_value: "0" }' in config
    latest = max((p for p in (copy / "recommend").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for f in ("model.py", "preprocess.py", "postprocess.py", "ranking_graph.py", "session_options.py", "model.onnx",
              "user_ids.npy", "titles.npy"):
        assert (latest / f).is_file(), f
    assert (latest / "model.onnx").read_bytes() == (copy / "autoencoder_onnx" / "1" / "model.onnx").read_bytes()
    apply_tuning(copy, Tuning())
    assert 'platform: "ensemble"' in (copy / "recommend" / "config.pbtxt").read_text()
    with pytest.raises(RepositoryError, match="pipeline must be one of"):
        Tuning(pipeline="turbo")
