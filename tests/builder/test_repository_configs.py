"""A repository built by `aerec repository` (write_repository) equals, config by config, the
templates in builder/config_templates/ with the build's values put in by hand here: both
parsed with model_config_pb2 and compared as messages."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.data.sources import load_dataset
from builder import templates
from builder.repository import TEMPLATES, RepositoryError, Tuning, write_repository
from conftest import FIXTURES, six_movie_runs

# The checkout's committed layout (the README's build target); builds copy the packaged files.
COMMITTED = Path(__file__).resolve().parents[2] / "model_repository"

pytestmark = pytest.mark.slow

DATA = str(FIXTURES / "six_movies" / "ratings.dat")
N_ITEMS = 6
TUNED = Tuning(network_instances=2, network_queue_delay_us=300, preferred_batch_sizes=[4, 8], ort_threads=1,
               ort_spinning=False, step_instances=3, step_queue_delay_us=50)


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def template(path):
    return parse(TEMPLATES / f"{path}.pbtxt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return six_movie_runs(load_dataset(DATA, "random", 0), tmp_path_factory.mktemp("configs-runs"), rater_epochs=1)


def schedule(c, delay, count, preferred=()):
    c.dynamic_batching.max_queue_delay_microseconds = delay
    c.dynamic_batching.preferred_batch_size[:] = list(preferred)
    c.instance_group[0].count = count


def ort(c, t):
    if t.ort_threads:
        c.parameters["intra_op_thread_count"].string_value = str(t.ort_threads)
    if not t.ort_spinning:
        c.parameters["session.intra_op.allow_spinning"].string_value = "0"


def network(name, t):
    c = template(name)
    c.input[0].dims[:] = [N_ITEMS]
    c.output[0].dims[:] = [N_ITEMS]
    schedule(c, t.network_queue_delay_us, t.network_instances, t.preferred_batch_sizes)
    ort(c, t)
    return c


def without(repeated, name):
    kept = [m for m in repeated if m.name != name]
    del repeated[:]
    repeated.extend(kept)


def test_ranker_and_rater_ensemble_is_templates_plus_values(runs, tmp_path):
    ranker, rater = runs
    repo = tmp_path / "repo"
    write_repository(ranker, repo, ["onnx"], TUNED, rating_run=rater)
    assert parse(repo / "ranker_onnx" / "config.pbtxt") == network("ranker_onnx", TUNED)
    assert parse(repo / "rater_onnx" / "config.pbtxt") == network("rater_onnx", TUNED)
    pre = template("preprocess")
    for o in pre.output:
        if o.name in ("DENSE", "BLOCKED"):
            o.dims[:] = [N_ITEMS]
    schedule(pre, TUNED.step_queue_delay_us, TUNED.step_instances)
    assert parse(repo / "preprocess" / "config.pbtxt") == pre
    post = template("postprocess")
    for i in post.input:
        if i.name != "TOP_K":
            i.dims[:] = [N_ITEMS]
    schedule(post, TUNED.step_queue_delay_us, TUNED.step_instances)
    assert parse(repo / "postprocess" / "config.pbtxt") == post
    # The ensemble has no build values for this layout: the template's text, comments and all.
    assert (repo / "recommend" / "config.pbtxt").read_text() == (TEMPLATES / "recommend.pbtxt").read_text()
    for step in ("preprocess", "postprocess"):
        assert (repo / step / "1" / "model.py").read_bytes() == (COMMITTED / step / "1" / "model.py").read_bytes()
        assert (repo / step / "1" / "serving" / "requests.py").is_file()
    # similar beside the ranker: its network and the steps' assets in its version folder.
    similar = template("similar")
    schedule(similar, TUNED.step_queue_delay_us, TUNED.step_instances)
    ort(similar, TUNED)
    assert parse(repo / "similar" / "config.pbtxt") == similar
    assert (repo / "similar" / "1" / "model.py").read_bytes() == (COMMITTED / "similar" / "1" / "model.py").read_bytes()
    for name in ("ranker.onnx", "item_ids.npy", "titles.npy", "assets.json", "serving/similar.py"):
        assert (repo / "similar" / "1" / name).is_file()


def test_an_int8_rater_is_named_in_the_ensemble(runs, tmp_path):
    ranker, rater = runs
    from builder.export import ExportConfig, export_run
    export_run(rater, ExportConfig(precisions=["fp32", "int8"]), bench_seconds=0.05)
    repo = tmp_path / "repo"
    write_repository(ranker, repo, ["onnx_int8", "onnx"], rating_run=rater)
    expected = template("recommend")
    next(s for s in expected.ensemble_scheduling.step if s.model_name == "rater_onnx").model_name = "rater_onnx_int8"
    assert parse(repo / "recommend" / "config.pbtxt") == expected
    int8 = network("rater_onnx", Tuning())
    int8.name = "rater_onnx_int8"
    assert parse(repo / "rater_onnx_int8" / "config.pbtxt") == int8


def test_ranker_alone_fused_is_the_fused_template_without_ratings(runs, tmp_path):
    ranker, _ = runs
    repo = tmp_path / "repo"
    tuning = Tuning(**{**TUNED.to_dict(), "pipeline": "fused"})
    write_repository(ranker, repo, ["onnx"], tuning)
    fused = template("recommend_fused")
    without(fused.output, "PREDICTED_RATINGS")
    schedule(fused, tuning.step_queue_delay_us, tuning.step_instances)
    ort(fused, tuning)
    assert parse(repo / "recommend" / "config.pbtxt") == fused
    post = template("postprocess")
    without(post.input, "RATER_PREDICTIONS")
    without(post.output, "PREDICTED_RATINGS")
    for i in post.input:
        if i.name != "TOP_K":
            i.dims[:] = [N_ITEMS]
    schedule(post, tuning.step_queue_delay_us, tuning.step_instances)
    assert parse(repo / "postprocess" / "config.pbtxt") == post
    version = repo / "recommend" / "1"
    assert (version / "model.py").read_bytes() == (COMMITTED / "recommend" / "fused" / "model.py").read_bytes()
    assert (version / "serving" / "ranking_graph.py").is_file() and (version / "ranker.onnx").is_file()


def test_rater_alone_ensemble_drops_the_ranker_step(runs, tmp_path):
    _, rater = runs
    repo = tmp_path / "repo"
    write_repository(rater, repo, ["onnx"])
    expected = template("recommend")
    steps = [s for s in expected.ensemble_scheduling.step if s.model_name != "ranker_onnx"]
    del expected.ensemble_scheduling.step[:]
    expected.ensemble_scheduling.step.extend(steps)
    del next(s for s in expected.ensemble_scheduling.step if s.model_name == "postprocess").input_map["RANKER_SCORES"]
    assert parse(repo / "recommend" / "config.pbtxt") == expected
    assert not (repo / "ranker_onnx").exists() and not (repo / "similar").exists()   # no ranker: no similar


def _built_versions(directory, names):
    """The committed layout only: a Quickstart run in this checkout fills model_repository/ with
    ignored version folders and assets, which a copy of it must leave behind."""
    version = Path(directory).name
    if version.isdigit():
        return [n for n in names if n != "model.py"]
    return [n for n in names if n.isdigit() and n != "1"]


def test_a_build_into_the_committed_layout_fills_version_1_beside_model_py(runs, tmp_path):
    """The committed preprocess/1/ and postprocess/1/ hold only model.py: the first build fills
    them (the same model.py), the next adds version 2."""
    ranker, rater = runs
    repo = tmp_path / "model_repository"
    shutil.copytree(COMMITTED, repo, ignore=_built_versions)
    (repo / "ranker_onnx" / "1").mkdir(exist_ok=True)   # an empty version folder is filled, not refused
    assert write_repository(ranker, repo, ["onnx"], rating_run=rater)["models"]["preprocess"] == 1
    assert (repo / "preprocess" / "1" / "assets.json").is_file()
    assert (repo / "ranker_onnx" / "1" / "model.onnx").is_file()
    assert (repo / "recommend" / "fused" / "model.py").is_file()   # the template stays, Triton skips it
    assert write_repository(ranker, repo, ["onnx"], rating_run=rater)["models"]["preprocess"] == 2


def test_each_build_starts_from_the_templates_whatever_the_folder_holds(runs, tmp_path):
    """A fused --tuned build and a ranker-alone build rewrite recommend/ and postprocess/ in the
    folder they fill; the next full build into that folder is still the templates' ensemble."""
    ranker, rater = runs
    repo = tmp_path / "model_repository"
    write_repository(ranker, repo, ["onnx"], Tuning(pipeline="fused"), rating_run=rater)
    assert parse(repo / "recommend" / "config.pbtxt").backend == "python"
    write_repository(ranker, repo, ["onnx"])
    assert [s.model_name for s in parse(repo / "recommend" / "config.pbtxt").ensemble_scheduling.step] == [
        "preprocess", "ranker_onnx", "postprocess"]
    write_repository(ranker, repo, ["onnx"], rating_run=rater)
    assert (repo / "recommend" / "config.pbtxt").read_text() == (TEMPLATES / "recommend.pbtxt").read_text()
    post = template("postprocess")
    for i in post.input:
        if i.name != "TOP_K":
            i.dims[:] = [N_ITEMS]
    assert parse(repo / "postprocess" / "config.pbtxt") == post


def test_a_field_added_to_a_template_reaches_every_build(runs, tmp_path, monkeypatch):
    """The templates are where a user changes what every build writes: a field the build does
    not set (here Triton's response cache) is kept."""
    import builder.repository as repository
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    with (templates / "ranker_onnx.pbtxt").open("a") as f:
        f.write("response_cache { enable: true }\n")
    monkeypatch.setattr(repository, "TEMPLATES", templates)
    ranker, _ = runs
    write_repository(ranker, tmp_path / "repo", ["onnx"], TUNED)
    built = parse(tmp_path / "repo" / "ranker_onnx" / "config.pbtxt")
    assert built.response_cache.enable and built.instance_group[0].count == TUNED.network_instances


def _at_head(path: str) -> str:
    shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=COMMITTED.parent, capture_output=True, text=True)
    if shown.returncode:
        pytest.skip(f"not a git checkout with {path} committed: {shown.stderr.strip()}")
    return shown.stdout


@pytest.mark.parametrize("name", ["ranker_onnx", "rater_onnx", "preprocess", "postprocess", "recommend", "similar"])
def test_the_committed_configs_are_the_templates(name):
    """model_repository/<name>/config.pbtxt is what the README's build writes (the default tuning,
    a ranker and a rater): the template's own text. Read from the commit, so a build in this
    checkout (a --tuned one rewrites them) does not count."""
    assert _at_head(f"model_repository/{name}/config.pbtxt") == _at_head(f"builder/config_templates/{name}.pbtxt")


@pytest.mark.parametrize("kind,committed", [("preprocess", "preprocess/1/model.py"),
                                            ("postprocess", "postprocess/1/model.py"),
                                            ("fused", "recommend/fused/model.py"),
                                            ("similar", "similar/1/model.py")])
def test_the_committed_model_py_are_the_packaged_ones(kind, committed):
    """model_repository/'s model.py files are what a build copies there: the packaged sources'
    bytes (builder/config_templates/python_models/, located by builder.templates)."""
    assert (COMMITTED / committed).read_bytes() == templates.python_model(kind).read_bytes()


def test_tuning_loads_what_perf_wrote_and_refuses_unknown_keys(tmp_path):
    (tmp_path / "tuned.json").write_text(json.dumps({"tuning": TUNED.to_dict()}))
    assert Tuning.load(tmp_path) == TUNED
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TUNED.to_dict(), "network_instance": 3}))
    with pytest.raises(RepositoryError, match="network_instance") as e:
        Tuning.load(bad)
    assert str(bad) in str(e.value)


# -- GPU repositories: no GPU here, so their configs are checked as messages -------------------
def gpu_network(name, precision, platform="onnxruntime_onnx"):
    c = network(f"{name.split('_')[0]}_onnx", Tuning())   # the role's committed template
    c.name = name
    c.instance_group[0].kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
    if platform == "tensorrt_plan":
        c.platform = "tensorrt_plan"
        c.parameters.clear()
    else:
        trt = c.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = precision
        trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return c


def test_gpu_repository_runs_networks_on_kind_gpu_with_the_tensorrt_accelerator(runs, tmp_path):
    ranker, rater = runs
    repo = tmp_path / "repo"
    manifest = write_repository(ranker, repo, ["onnx"], rating_run=rater, device="gpu")
    assert parse(repo / "ranker_onnx" / "config.pbtxt") == gpu_network("ranker_onnx", "FP32")
    assert parse(repo / "rater_onnx" / "config.pbtxt") == gpu_network("rater_onnx", "FP32")
    for step in ("preprocess", "postprocess"):   # the Python steps stay on the CPU
        assert [g.kind for g in parse(repo / step / "config.pbtxt").instance_group] == [
            model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert (repo / "recommend" / "config.pbtxt").read_text() == (TEMPLATES / "recommend.pbtxt").read_text()
    assert manifest["device"] == "gpu"
    # similar runs ONNX Runtime inside its Python stub, which NVIDIA's image has not: left out.
    assert not (repo / "similar").exists()
    # apply_tuning keeps the networks on the GPU; the fused pipeline (CPU only) is refused.
    from builder.repository import apply_tuning
    apply_tuning(repo, Tuning(network_instances=2))
    tuned = gpu_network("rater_onnx", "FP32")
    tuned.instance_group[0].count = 2
    assert parse(repo / "rater_onnx" / "config.pbtxt") == tuned
    with pytest.raises(RepositoryError, match="fused"):
        apply_tuning(repo, Tuning(pipeline="fused"))
    with pytest.raises(RepositoryError, match="fused"):
        write_repository(ranker, tmp_path / "fused", ["onnx"], Tuning(pipeline="fused"), device="gpu")
    with pytest.raises(RepositoryError, match="device"):
        write_repository(ranker, tmp_path / "tpu", ["onnx"], device="tpu")


def test_gpu_repository_serves_tensorrt_plans_where_the_export_has_them(runs, tmp_path):
    """A plan from full TensorRT cannot be built here (no TensorRT, no GPU): stand-in bytes with the
    metadata build_plans writes beside a plan. The rater is then a tensorrt_plan model."""
    ranker, rater = runs
    rater_copy = tmp_path / "rater"
    shutil.copytree(rater, rater_copy)
    plan = rater_copy / "export" / "model_fp32.plan"
    plan.write_bytes(b"stand-in for a TensorRT plan")
    (plan.parent / "model_fp32.plan.json").write_text(json.dumps(
        {"precision": "fp32", "tensorrt": "10.13.0", "gpu": "NVIDIA H200",
         "profile": {"min": 1, "opt": 64, "max": 256}, "onnx": "model_fp32.onnx"}))
    repo = tmp_path / "repo"
    manifest = write_repository(ranker, repo, ["onnx"], rating_run=rater_copy, device="gpu")
    assert manifest["rater"] == "rater_plan"
    assert manifest["network_serving"]["rater_plan"]["platform"] == "tensorrt_plan"
    assert parse(repo / "rater_plan" / "config.pbtxt") == gpu_network("rater_plan", "FP32", "tensorrt_plan")
    assert (repo / "rater_plan" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    expected = template("recommend")
    next(s for s in expected.ensemble_scheduling.step if s.model_name == "rater_onnx").model_name = "rater_plan"
    assert parse(repo / "recommend" / "config.pbtxt") == expected
    # A CPU build ignores plans: the committed CPU layout is unchanged.
    cpu = tmp_path / "cpu"
    write_repository(ranker, cpu, ["onnx"], rating_run=rater_copy)
    assert parse(cpu / "rater_onnx" / "config.pbtxt") == network("rater_onnx", Tuning())


def test_gpu_int8_and_fp16_networks_take_the_graphs_tensorrt_parses(runs, tmp_path):
    from builder.export import ExportConfig, export_run
    ranker, rater = runs
    rater_copy = tmp_path / "rater"
    shutil.copytree(rater, rater_copy)
    export_run(rater_copy, ExportConfig(precisions=["fp32", "fp16", "int8"]), bench_seconds=0.05)
    repo = tmp_path / "repo"
    write_repository(ranker, repo, ["onnx_int8", "onnx_fp16"], rating_run=rater_copy, device="gpu")
    assert parse(repo / "rater_onnx_int8" / "config.pbtxt") == gpu_network("rater_onnx_int8", "INT8")
    assert parse(repo / "rater_onnx_fp16" / "config.pbtxt") == gpu_network("rater_onnx_fp16", "FP16")
    # INT8 under TensorRT: the Q/DQ graph with float biases, not ONNX Runtime's INT32-bias one.
    served = (repo / "rater_onnx_int8" / "1" / "model.onnx").read_bytes()
    assert served == (rater_copy / "export" / "model_int8_trt.onnx").read_bytes()
    assert (repo / "rater_onnx_fp16" / "1" / "model.onnx").read_bytes() == (
        rater_copy / "export" / "model_fp16.onnx").read_bytes()
