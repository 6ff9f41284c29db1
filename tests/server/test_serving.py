"""A real Triton server (the embedded binary) serving a ranker and a rater, gRPC and HTTP."""
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.config import TrainConfig
from builder.presets import preset
from serving.ranking import top_k_unrated
from builder.repository import RepositoryError, Tuning, write_repository
from conftest import TESTS_COLD_START, ranker_and_rater_runs, shared_run, snapshot, train_and_export
from server.launcher import TritonServer, child_pids, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(u1):
    """A top-N ranker (EASE) and a small rating model, trained once for both pipelines (the
    session's shared runs)."""
    ranker, _, rater, result = ranker_and_rater_runs(u1)
    return ranker, rater, result.model.eval()


def onnx_outputs(run: Path, x: np.ndarray) -> np.ndarray:
    """The exported fp32 network's output for rows x [users, n_items], by ONNX Runtime in-process."""
    session = ort.InferenceSession(str(run / "export" / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@dataclass
class Served:
    server: TritonServer
    tuning: Tuning
    ranker: Path            # the ranker's run
    rater: Path             # the rater's run
    rater_model: torch.nn.Module
    repo: Path


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def served(runs, tmp_path_factory, request):
    """Every test below runs against both pipelines: the ensemble (preprocess -> ranker and rater
    -> postprocess: the session's server of these runs) and the fused one (one Python model, one
    merged ONNX graph)."""
    ranker, rater, model = runs
    if request.param == "ensemble":
        server = request.getfixturevalue("ranker_and_rater_server")
        yield Served(server, Tuning(), ranker, rater, model, server.repository)
        return
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    repo = root / "model_repository"
    # The fused variant with the knobs the quick tuning tries for the lone user (two ONNX Runtime
    # threads that sleep when idle, no batching delay), so those configs are served for real.
    tuning = Tuning(pipeline="fused", ort_threads=2, ort_spinning=False, step_queue_delay_us=0)
    write_repository(ranker, repo, ["onnx"], tuning, rating_run=rater, cold_start=TESTS_COLD_START)
    with TritonServer(repo, build_dir=root / "build") as server:
        yield Served(server, tuning, ranker, rater, model, repo)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_rater_network_matches_pytorch_on_200_test_users(served, u1, protocol):
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)[:200]
    x = u1.train[users].toarray().astype(np.float32)
    mod, client = _client(served.server, protocol)
    inp = mod.InferInput("RATINGS", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("rater_onnx", [inp]).as_numpy("PREDICTIONS")
    with torch.no_grad():
        ref = served.rater_model(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= 1e-4


def test_new_build_adds_a_version_and_a_failed_build_keeps_the_old(served, tmp_path):
    copy = tmp_path / "repo"
    write_repository(served.ranker, copy, ["onnx"], rating_run=served.rater)
    manifest = write_repository(served.ranker, copy, ["onnx"], rating_run=served.rater)
    assert manifest["models"] == {"ranker_onnx": 2, "rater_onnx": 2, "preprocess": 2, "postprocess": 2,
                                  "recommend": 1, "similar": 2}
    assert (manifest["ranker"], manifest["rater"], manifest["n_items"]) == ("ranker_onnx", "rater_onnx", 1682)
    assert manifest["networks"] == {"ranker_onnx": 1682, "rater_onnx": 1682}
    assert manifest["rating_run"] == str(served.rater.resolve())
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(RepositoryError, match="model_int8.onnx missing"):
        write_repository(served.ranker, copy, ["onnx", "onnx_int8"], rating_run=served.rater)
    with pytest.raises(RepositoryError, match="is a rating model"):   # the roles swapped
        write_repository(served.rater, copy, ["onnx"], rating_run=served.ranker)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
    assert not any(p.name.startswith(".repo-") for p in tmp_path.iterdir())


def test_runs_with_different_item_sets_are_refused(served, ml100k, tmp_path):
    """A ranker trained on fewer items than the rater cannot share its input vector: refused,
    naming both widths, and the repository already there is left as it was."""
    copy = tmp_path / "repo"
    write_repository(served.ranker, copy, ["onnx"], rating_run=served.rater)
    before = snapshot(copy)
    f = ml100k.frame
    part = tmp_path / "part.csv"
    f[f.item <= 1500][["user", "item", "rating"]].to_csv(part, index=False)
    from builder.data.sources import load_dataset
    small = load_dataset(f"csv:{part}?scale=1:5", "random", 0)
    other, _ = train_and_export(small, tmp_path / "ease-1500", TrainConfig(model="ease", data=f"csv:{part}?scale=1:5",
                                                                           split="random", device="cpu"))
    with pytest.raises(RepositoryError, match=r"scores 1500 items but .* 1682"):
        write_repository(other, copy, ["onnx"], rating_run=served.rater)
    assert snapshot(copy) == before


def test_server_loads_configs_without_warnings(served):
    log = served.server.log.read_text(errors="replace")
    if served.tuning.pipeline == "ensemble":  # the fused model holds both networks in one session
        assert "successfully loaded 'ranker_onnx'" in log and "successfully loaded 'rater_onnx'" in log
    config_warnings = [line for line in log.splitlines() if line.startswith("W") and "config" in line.lower()]
    assert config_warnings == []


@pytest.mark.skipif(not sysconfig.get_config_var("Py_ENABLE_SHARED"), reason="this interpreter has no libpython")
def test_python_stubs_run_the_interpreter_of_this_venv(served):
    # A stub for "3.11" loads whichever libpython3.11 the loader finds first: the system's may be
    # another patch release than the venv's interpreter (Debian 3.11.2 under 3.11.7 here).
    own = Path(sysconfig.get_config_var("LIBDIR")).resolve()
    stubs = [pid for pid in child_pids(served.server.process.pid)
             if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"triton_python_backend_stub")]
    assert stubs
    for pid in stubs:
        libs = {Path(line.split()[-1]) for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "libpython3" in line}
        assert libs and all(lib.parent.resolve() == own for lib in libs), libs


def test_second_server_on_the_same_build_folder(served):
    """Two servers may share one backend folder (the stub is in use by the first), each with its
    own log: the second never truncates the first one's."""
    server = served.server
    first = server.log.read_bytes()
    with TritonServer(server.repository, build_dir=server.build_dir) as two:
        assert two.ready() and server.ready()
        assert two.log != server.log and two.log.parent == server.log.parent
        assert str(two.http_port) in two.log.name and "successfully loaded" in two.log.read_text(errors="replace")
        assert server.log.read_bytes().startswith(first)


# ---- the `recommend` model -------------------------------------------------------------------

OUTPUTS = ("RECOMMENDED_IDS", "SCORES", "PREDICTED_RATINGS", "TITLES")


def _recommend(mod, client, user=None, items=None, ratings=None, k=10, dtype_items="INT64") -> dict:
    """One request; {output name: its first row} for the outputs the server sent, and
    UNKNOWN_ITEMS and N_RECOMMENDED as ints."""
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
    out = {n: r.as_numpy(n)[0] for n in OUTPUTS if r.as_numpy(n) is not None}
    return {**out, "UNKNOWN_ITEMS": int(r.as_numpy("UNKNOWN_ITEMS")[0, 0]),
            "N_RECOMMENDED": int(r.as_numpy("N_RECOMMENDED")[0, 0])}


def _client(server, protocol):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def _assert_served_equals_offline(server, u1, protocol, ranker: Path | None, rater: Path | None, n_users=200):
    """Known users (USER_ID) and new users (ITEM_IDS+RATINGS of a user's training ratings): the
    served list equals top_k_unrated over the ranker's (else the rater's) ONNX Runtime outputs on
    the exported fp32 file; SCORES are the ranker's outputs there (else the clipped predicted
    ratings); PREDICTED_RATINGS the rater's, clipped, and absent when no rater is served."""
    mod, client = _client(server, protocol)
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)[:n_users]
    x = u1.train[users].toarray().astype(np.float32)
    predicted = None if rater is None else np.clip(onnx_outputs(rater, x), 1, 5)
    by = onnx_outputs(ranker, x) if ranker is not None else onnx_outputs(rater, x)
    top = top_k_unrated(by, x != 0, 10)
    for j, u in enumerate(users):
        row = u1.train[u]
        for got in (_recommend(mod, client, user=int(u1.user_ids[u])),
                    _recommend(mod, client, items=u1.item_ids[row.indices].tolist(), ratings=row.data.tolist())):
            assert got["RECOMMENDED_IDS"].tolist() == u1.item_ids[top[j]].tolist()
            scores = by[j, top[j]] if ranker is not None else predicted[j, top[j]]
            np.testing.assert_allclose(got["SCORES"], scores, rtol=1e-5, atol=1e-6)
            if rater is None:
                assert "PREDICTED_RATINGS" not in got
            else:
                np.testing.assert_allclose(got["PREDICTED_RATINGS"], predicted[j, top[j]], rtol=1e-5, atol=1e-6)
            assert got["TITLES"][0].decode() == u1.titles[top[j][0]] and got["UNKNOWN_ITEMS"] == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_top10_ranked_by_the_ranker_with_the_raters_ratings_equals_offline(served, u1, protocol):
    _assert_served_equals_offline(served.server, u1, protocol, served.ranker, served.rater)


@pytest.mark.parametrize("alone", ["ranker", "rater"])
def test_one_network_alone_serves(served, u1, tmp_path, alone):
    """A repository of a ranker alone (no PREDICTED_RATINGS declared or sent) or a rater alone
    (ranked by predicted rating: SCORES = PREDICTED_RATINGS), in the same pipeline."""
    import subprocess
    import sys
    from client import RecommenderClient
    run = served.ranker if alone == "ranker" else served.rater
    manifest = write_repository(run, tmp_path / "repo", ["onnx"], served.tuning)
    assert (manifest["ranker"], manifest["rater"]) == ((f"{alone}_onnx", None) if alone == "ranker"
                                                       else (None, f"{alone}_onnx"))
    with TritonServer(tmp_path / "repo", build_dir=served.server.build_dir, log=tmp_path / "server.log") as server:
        for protocol in ("grpc", "http"):
            _assert_served_equals_offline(server, u1, protocol, served.ranker if alone == "ranker" else None,
                                          served.rater if alone == "rater" else None, n_users=20)
        outputs = [o["name"] for o in RecommenderClient(server.http_url, "http").metadata()["outputs"]]
        assert ("PREDICTED_RATINGS" in outputs) == (alone == "rater")
        rec = RecommenderClient(server.grpc_url).recommend(user_id=42, k=3)
        assert (rec.predicted_ratings is None) == (alone == "ranker")
        table = subprocess.run([sys.executable, "-m", "cli.main", "recommend", "--url", server.grpc_url,
                                "--user", "42", "-k", "3"], capture_output=True, text=True, timeout=120)
        assert table.returncode == 0, table.stderr
        assert "score" in table.stdout and ("predicted rating" in table.stdout) == (alone == "rater")


# Other rankers beside the rater: {name: the config's changes to the preset}. The served lists and
# scores equal the exported graph's offline, in both pipelines.
OTHER_RANKERS = {
    # EASE on rating values (EDLAE, popularity correction): the served RATINGS (a known user's, or
    # a new user's ITEM_IDS + RATINGS) are weighted as in training (the fused pipeline through the
    # sparse path of serving/sparse_input.py for a lone user).
    "ease-values": preset("ease-values"),
    # ELSA, low-rank EASE (two products against one [n_items, r] matrix), a few epochs: the fused
    # pipeline reads only the history's rows of A for a lone user (serving/sparse_input.py
    # recognises ELSA's first product).
    "elsa": {**preset("elsa"), "epochs": 3},
    # RecVAE (dense encoder with layer norms, posterior mean, linear decoder), narrower and two
    # epochs: the served graph is under test here, not its accuracy.
    "recvae": {**preset("recvae"), "hidden": [64, 32], "epochs": 2},
    # Low-rank EASE (EASE's closed form on a rank-r SVD: a MatMul and a Gemm against one
    # [n_items, r] matrix, scaled per item): the fused pipeline reads only the history's rows of V
    # for a lone user (serving/sparse_input.py recognises its first product).
    "ease-lowrank": preset("ease-lowrank"),
}


@pytest.mark.parametrize("name", OTHER_RANKERS)
def test_other_ranker_serves_as_offline(served, u1, tmp_path, name):
    run, _ = shared_run(u1, TrainConfig(device="cpu").updated(**OTHER_RANKERS[name]))
    write_repository(run, tmp_path / "repo", ["onnx"], served.tuning, rating_run=served.rater)
    with TritonServer(tmp_path / "repo", build_dir=served.server.build_dir, log=tmp_path / "server.log") as server:
        for protocol in ("grpc", "http"):
            _assert_served_equals_offline(server, u1, protocol, run, served.rater, n_users=50)

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
# Every one of these that our code refuses is checked in-process (tests/serving/test_request_errors.py);
# on this server: two of ours and Triton's own dtype check, to show the error mapping end to end.
LIVE_BAD_REQUESTS = [r for r in BAD_REQUESTS if r[1] in ("unknown USER_ID 999999", "NaN or infinity", "ITEM_IDS")]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("kwargs,message", LIVE_BAD_REQUESTS, ids=[m for _, m in LIVE_BAD_REQUESTS])
def test_bad_request_gets_its_error_and_server_keeps_serving(served, protocol, kwargs, message):
    """Each a client's mistake: HTTP 400 / gRPC INVALID_ARGUMENT, never a server error."""
    server = served.server
    mod, client = _client(server, protocol)
    with pytest.raises(Exception, match=message) as e:
        _recommend(mod, client, **kwargs)
    assert e.value.status() == {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}[protocol]
    assert len(_recommend(mod, client, user=1, k=5)["RECOMMENDED_IDS"]) == 5


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_top_k_beyond_the_unrated_items_is_padded_as_offline(served, u1, protocol):
    """User 13 (373 training ratings in u1) and a new user (40 ratings) asking for more items than they
    have left unrated: every unrated item, ranked as top_k_unrated ranks it offline, then
    padding (id -1, NaN, b""); N_RECOMMENDED counts the real ones; no rated item comes back."""
    mod, client = _client(served.server, protocol)
    user = 13
    row = u1.train[int(u1.user_index([user])[0])]
    new = u1.item_ids[:40]
    x = np.zeros((2, u1.n_items), np.float32)
    x[0, row.indices] = row.data
    x[1, :40] = 3.0
    top = top_k_unrated(onnx_outputs(served.ranker, x), x != 0, u1.n_items)
    for j, request in enumerate((dict(user=user), dict(items=new.tolist(), ratings=[3.0] * 40))):
        n = int((x[j] == 0).sum())
        k = n + 5 if j == 0 else u1.n_items
        r = _recommend(mod, client, k=k, **request)
        ids = r["RECOMMENDED_IDS"]
        assert len(ids) == k and r["N_RECOMMENDED"] == n
        assert ids.tolist() == [int(u1.item_ids[c]) if c >= 0 else -1 for c in top[j, :k]]
        assert not set(ids[:n].tolist()) & set(u1.item_ids[x[j] != 0].tolist())
        assert (ids[n:] == -1).all() and np.isnan(r["SCORES"][n:]).all() and np.isnan(r["PREDICTED_RATINGS"][n:]).all()
        assert set(r["TITLES"][n:].tolist()) == {b""} and not np.isnan(r["SCORES"][:n]).any()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_only_the_requested_outputs_come_back(served, protocol):
    mod, client = _client(served.server, protocol)
    inputs = [mod.InferInput("ITEM_IDS", [1, 2], "INT64"), mod.InferInput("RATINGS", [1, 2], "FP32"),
              mod.InferInput("TOP_K", [1, 1], "INT32")]
    for t, a in zip(inputs, (np.array([[50, 172]]), np.array([[5.0, 4.0]], np.float32), np.array([[10]], np.int32))):
        t.set_data_from_numpy(a)
    every = client.infer("recommend", inputs)
    some = client.infer("recommend", inputs, outputs=[mod.InferRequestedOutput("RECOMMENDED_IDS"),
                                                      mod.InferRequestedOutput("SCORES")])
    assert every.as_numpy("TITLES") is not None and every.as_numpy("UNKNOWN_ITEMS") is not None
    assert some.as_numpy("TITLES") is None and some.as_numpy("UNKNOWN_ITEMS") is None
    for name in ("RECOMMENDED_IDS", "SCORES"):
        np.testing.assert_array_equal(some.as_numpy(name), every.as_numpy(name))


def test_unknown_items_are_skipped_and_counted(served):
    server = served.server
    mod, client = _client(server, "grpc")
    got = _recommend(mod, client, items=[50, 172, 999_999, 888_888], ratings=[5.0, 4.0, 3.0, 2.0])
    ids = got["RECOMMENDED_IDS"].tolist()
    assert got["UNKNOWN_ITEMS"] == 2 and len(ids) == 10 and 50 not in ids


def test_bad_request_does_not_fail_its_batch_mates(served):
    """Good and bad requests in flight together (dynamic batching groups them): only the bad fail."""
    import queue
    server = served.server
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
    server = served.server
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
        assert ids[j].tolist() == _recommend(mod, client, user=users[j], k=7)["RECOMMENDED_IDS"].tolist()
    # Mixed TOP_K in one request cannot make a rectangular answer: a clear error instead.
    inputs[1].set_data_from_numpy(np.arange(1, 17, dtype=np.int32)[:, None])
    with pytest.raises(Exception, match="TOP_K differs across the rows"):
        client.infer("recommend", inputs)


def test_apply_tuning_switches_the_pipeline(served, tmp_path):
    """`aerec repository --tuned` may pick the fused pipeline and back: same model files either way."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from builder.repository import apply_tuning
    copy = tmp_path / "repo"
    shutil.copytree(served.repo, copy)
    apply_tuning(copy, Tuning(pipeline="fused", ort_threads=1))
    config = (copy / "recommend" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "intra_op_thread_count" in config
    assert "allow_spinning" not in config  # ONNX Runtime's default unless asked
    apply_tuning(copy, Tuning(pipeline="fused", ort_threads=2, ort_spinning=False))
    config = (copy / "recommend" / "config.pbtxt").read_text()
    parsed = text_format.Parse(config, model_config_pb2.ModelConfig())
    assert parsed.parameters["session.intra_op.allow_spinning"].string_value == "0"
    latest = max((p for p in (copy / "recommend").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for f in ("model.py", "serving/requests.py", "serving/lists.py", "serving/ranking_graph.py",
              "serving/session_options.py", "ranker.onnx", "rater.onnx", "user_ids.npy", "titles.npy"):
        assert (latest / f).is_file(), f
    for role in ("ranker", "rater"):
        assert (latest / f"{role}.onnx").read_bytes() == (copy / f"{role}_onnx" / "1" / "model.onnx").read_bytes()
    assert "PREDICTED_RATINGS" in config
    apply_tuning(copy, Tuning())
    config = (copy / "recommend" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in config
    assert 'model_name: "ranker_onnx"' in config and 'model_name: "rater_onnx"' in config
    with pytest.raises(RepositoryError, match="pipeline must be one of"):
        Tuning(pipeline="turbo")


def test_a_second_server_on_taken_ports_is_refused_naming_the_port(served):
    """Readiness checks on a taken port would answer from the first server: the second must not
    start, and the error says which port."""
    server = served.server
    with pytest.raises(ValueError, match=f"gRPC port {server.grpc_port} on 127.0.0.1 is already in use"):
        TritonServer(server.repository, http_port=free_port(), grpc_port=server.grpc_port,
                     build_dir=server.build_dir)
    assert server.ready()


def test_recommendation_metrics_count_both_pipelines_answers(served, u1):
    """postprocess (the ensemble) and the fused model count users answered and list lengths on
    Triton's /metrics (serving/metrics.py), labelled with the ranking network's version."""
    import urllib.request
    from client import RecommenderClient
    from serving.metrics import LIST_LENGTH, ROWS

    def scrape(name):
        text = urllib.request.urlopen(f"http://{served.server.metrics_url}/metrics", timeout=10).read().decode()
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.split("{")[0] == name and 'network="ranker_onnx"' in line)
    before = {n: scrape(n) for n in (ROWS, f"{LIST_LENGTH}_sum")}
    RecommenderClient(served.server.grpc_url).recommend_many([int(u) for u in u1.user_ids[:12]], k=5)
    assert scrape(ROWS) - before[ROWS] == 12
    assert scrape(f"{LIST_LENGTH}_sum") - before[f"{LIST_LENGTH}_sum"] == 12 * 5
