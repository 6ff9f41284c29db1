"""Two versions side by side on one live server: a repository built twice, the second time with
`keep_previous`, serves the newest model as `recommend` and the one before as
`recommend_previous`; the SDK splits users between them (sticky), shadows, and says which
version answered; the recommendation metrics and the Grafana dashboard's every metric are on
the server's /metrics."""
import asyncio
import json
import re
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.config import TrainConfig
from builder.previous import PREVIOUS
from builder.repository import RepositoryError, Tuning, apply_tuning, write_repository
from client import RecommenderClient
from conftest import shared_run, small_rater_config, train_and_export
from serving.metrics import FALLBACK, LIST_LENGTH, ROWS
from serving.ranking import top_k_unrated
from server.launcher import TritonServer

pytestmark = pytest.mark.slow
SPLIT = {"recommend": 0.5, PREVIOUS: 0.5}
KEY = "side-by-side-admin-key"


@pytest.fixture(scope="module")
def ab(u1, tmp_path_factory):
    """(server, repo, previous run, newest run): a server of version 1 of the rater (a small SAE),
    then version 2 (another SAE) built into its repository with keep_previous and reloaded."""
    root = tmp_path_factory.mktemp("side-by-side")
    old, _ = shared_run(u1, small_rater_config())
    new, _ = train_and_export(u1, root / "new", TrainConfig(model="sae", hidden=[24, 12], epochs=2, batch_size=64,
                                                           device="cpu", seed=7))
    repo = root / "repo"
    with pytest.raises(RepositoryError, match="serves none yet"):
        write_repository(old, repo, ["onnx"], keep_previous=True)
    write_repository(old, repo, ["onnx"])
    with TritonServer(repo, build_dir=root / "build", admin_key=KEY) as server:
        assert RecommenderClient(server.grpc_url).recommend(user_id=int(u1.user_ids[0])).model_version == "1"
        write_repository(new, repo, ["onnx"], keep_previous=True)
        apply_tuning(repo, Tuning(step_queue_delay_us=50))   # a retune keeps both versions loaded
        assert PREVIOUS in RecommenderClient(server.grpc_url, admin_key=KEY).reload()
        yield server, repo, old, new


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_pins_the_previous_steps_and_loads_both_versions(ab):
    _, repo, _, _ = ab
    for name in ("preprocess", "postprocess", "rater_onnx"):
        assert list(_config(repo / name / "config.pbtxt").version_policy.specific.versions) == [1, 2]
    previous = _config(repo / PREVIOUS / "config.pbtxt")
    assert previous.platform == "ensemble" and {s.model_version for s in previous.ensemble_scheduling.step} == {1}
    assert {s.model_version for s in _config(repo / "recommend" / "config.pbtxt").ensemble_scheduling.step} == {-1}
    manifest = json.loads((repo / "aerec_repository.json").read_text())
    assert manifest["previous"]["models"] == {"preprocess": 1, "postprocess": 1, "rater_onnx": 1}


def _offline(run, u1, users):
    """The run's own list for known users: top-10 unrated by its exported network's output."""
    x = u1.train[users].toarray().astype(np.float32)
    s = ort.InferenceSession(str(run / "export" / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    by = s.run(None, {s.get_inputs()[0].name: x})[0]
    return [u1.item_ids[row].tolist() for row in top_k_unrated(by, x != 0, 10)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_each_pipeline_answers_its_own_versions_lists(ab, u1, protocol):
    """recommend_previous answers what the previous run ranks offline, recommend the newest's,
    and each Recommendation names its pipeline and version."""
    server, _, old, new = ab
    users = np.flatnonzero(np.diff(u1.train.indptr) > 0)[:40]
    url = server.grpc_url if protocol == "grpc" else server.http_url
    for pipeline, run, version in ((PREVIOUS, old, "1"), ("recommend", new, "2")):
        rc = RecommenderClient(url, protocol, model=pipeline)
        got = rc.recommend_many([int(u1.user_ids[u]) for u in users], k=10)
        assert [r.item_ids for r in got] == _offline(run, u1, users)
        assert {(r.model, r.model_version) for r in got} == {(pipeline, version)}
    assert _offline(old, u1, users) != _offline(new, u1, users)


def test_split_is_sticky_and_both_pipelines_answer(ab, u1):
    server, _, _, _ = ab
    rc = RecommenderClient(server.grpc_url, split=SPLIT)
    users = [int(u) for u in u1.user_ids[:60]]
    first = [rc.recommend(user_id=u) for u in users]
    again = [rc.recommend(user_id=u) for u in users]
    assert [(r.model, r.item_ids) for r in first] == [(r.model, r.item_ids) for r in again]
    assert {(r.model, r.model_version) for r in first} == {("recommend", "2"), (PREVIOUS, "1")}
    many = rc.recommend_many(users)
    assert [(r.model, r.item_ids) for r in many] == [(r.model, r.item_ids) for r in first]
    http = RecommenderClient(server.http_url, "http", split=SPLIT)
    assert [http.recommend(user_id=u).model for u in users[:10]] == [r.model for r in first[:10]]
    rec = asyncio.run(rc.recommend_async(user_id=users[0]))
    assert (rec.model, rec.model_version, rec.item_ids) == (first[0].model, first[0].model_version, first[0].item_ids)
    direct = {p: RecommenderClient(server.grpc_url, model=p) for p in SPLIT}
    for u, r in zip(users[:10], first):
        assert r.item_ids == direct[r.model].recommend(user_id=u).item_ids


def test_shadow_returns_the_primarys_answer_and_its_errors_never_fail(ab, u1):
    server, _, _, _ = ab
    seen, done = [], threading.Event()

    def on_shadow(pipeline, answer):
        seen.append((pipeline, answer))
        done.set()
    rc = RecommenderClient(server.grpc_url, split={"recommend": 1.0, PREVIOUS: 0.0}, shadow=True)
    rc.on_shadow = on_shadow
    user = int(u1.user_ids[0])
    rec = rc.recommend(user_id=user)
    assert rec.model == "recommend"
    assert rec.item_ids == RecommenderClient(server.grpc_url).recommend(user_id=user).item_ids
    assert done.wait(10)
    pipeline, shadow = seen[0]
    assert pipeline == PREVIOUS and shadow.model_version == "1"
    assert shadow.item_ids == RecommenderClient(server.grpc_url, model=PREVIOUS).recommend(user_id=user).item_ids
    broken = RecommenderClient(server.grpc_url, split={"recommend": 1.0, "no_such_pipeline": 0.0}, shadow=True,
                               protocol="grpc")
    assert broken.recommend(user_id=user).item_ids == rec.item_ids
    http = RecommenderClient(server.http_url, "http", split={"recommend": 1.0, "no_such_pipeline": 0.0}, shadow=True)
    assert http.recommend(user_id=user).item_ids == rec.item_ids and http.shadow_failures == 1


def _scrape(server) -> dict[str, float]:
    """{series (name and labels, as written): value} of the server's /metrics."""
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def _sum(metrics, name, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for s, v in metrics.items()
               if s.split("{")[0] == name and all(w in s for w in want))


def test_recommendation_metrics_per_version_on_the_metrics_endpoint(ab, u1):
    server, _, _, _ = ab
    before = _scrape(server)
    users = [int(u) for u in u1.user_ids[:20]]
    for pipeline in SPLIT:
        rc = RecommenderClient(server.grpc_url, model=pipeline)
        rc.recommend_many(users, k=10)
        cold = rc.recommend(user_id=10**9, k=7)   # an unknown user: the popularity list
        assert cold.source == "popularity"
    after = _scrape(server)
    for version in ("1", "2"):
        delta = lambda name: _sum(after, name, version=version) - _sum(before, name, version=version)  # noqa: E731
        assert delta(ROWS) == 21
        assert delta(FALLBACK) == 1
        assert delta(f"{LIST_LENGTH}_count") == 21 and delta(f"{LIST_LENGTH}_sum") == 20 * 10 + 7
    assert _sum(after, ROWS, network="rater_onnx") >= 42


def test_dashboard_panels_read_metrics_the_server_exports(ab, u1, tmp_path):
    from server.deploy.grafana import DASHBOARD_FILE, metric_names
    from server.deploy.kubernetes import write_kubernetes
    server, repo, _, _ = ab
    RecommenderClient(server.grpc_url).recommend(user_id=int(u1.user_ids[0]))
    write_kubernetes(repo, 1, False, tmp_path / "deploy")
    board = json.loads((tmp_path / "deploy" / DASHBOARD_FILE).read_text())
    exported = {s.split("{")[0] for s in _scrape(server)}
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 6
    for expr in exprs:
        names = metric_names(expr)
        assert names and names <= exported, (expr, names - exported)
    assert {"nv_inference_request_success", "nv_inference_queue_duration_us", ROWS, FALLBACK} <= set().union(
        *map(metric_names, exprs))


def test_cli_recommend_split_names_the_pipeline(ab, u1):
    server, _, _, _ = ab
    user = str(u1.user_ids[0])
    cmd = [sys.executable, "-m", "cli.main", "recommend", "--user", user, "--url", server.grpc_url,
           "--split", f"recommend=0.5,{PREVIOUS}=0.5"]
    out = [subprocess.run(cmd, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert all(o.returncode == 0 for o in out), out[0].stderr
    said = [re.search(r"answered by (\S+) \(version (\d+)\)", o.stdout).groups() for o in out]
    assert said[0] == said[1] and said[0] in {("recommend", "2"), (PREVIOUS, "1")}


def test_a_build_without_keep_previous_serves_the_newest_alone(ab, tmp_path):
    """`aerec repository --keep-previous` moves the pair on (3 beside 2); a build without it
    serves the newest alone."""
    import shutil
    _, repo, old, _ = ab
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    cli = subprocess.run([sys.executable, "-m", "cli.main", "repository", str(old), "--out", str(copy),
                          "--keep-previous"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert f"{PREVIOUS}: the previous version" in cli.stdout
    assert list(_config(copy / "rater_onnx" / "config.pbtxt").version_policy.specific.versions) == [2, 3]
    assert {s.model_version for s in _config(copy / PREVIOUS / "config.pbtxt").ensemble_scheduling.step} == {2}
    write_repository(old, copy, ["onnx"])
    assert not (copy / PREVIOUS).exists()
    assert not _config(copy / "rater_onnx" / "config.pbtxt").HasField("version_policy")
