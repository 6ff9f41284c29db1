"""Kubernetes manifests, Helm chart and KServe InferenceService, checked offline: the plain
manifests against Kubernetes' own schemas (kubernetes-validate, strict), the chart linted and
rendered by Helm 4's library (helm-python-sdk) and held equal to the plain manifests, the
InferenceService through the kserve SDK's model classes (in its own process: kserve's protobuf
messages clash with tritonclient's). No cluster is contacted."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from server.deploy.kubernetes import (PRE_STOP_SECONDS, QUEUE_METRIC, TRITON_EXIT_TIMEOUT_SECONDS, DeployError,
                                      render_kubernetes, write_kubernetes)
from server.deploy.shared_memory import dev_shm_warning, shared_memory_bytes

kubernetes_validate = pytest.importorskip("kubernetes_validate")
helm = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ["model-repository-pvc.yaml", "repository-loader.yaml", "deployment.yaml", "service.yaml", "hpa.yaml"]


def _model(repo: Path, config: mc.ModelConfig) -> None:
    (repo / config.name / "1").mkdir(parents=True)
    (repo / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))


def _repository(root: Path, pipeline: str = "ensemble") -> Path:
    """A repository's layout and configs as `aerec repository` writes them (no weights: nothing
    here loads a model): `recommend` (ensemble or fused), a network on KIND_CPU."""
    repo = root / "repo"
    cpu = [mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)]
    _model(repo, mc.ModelConfig(name="rater_onnx", platform="onnxruntime_onnx", max_batch_size=256,
                                instance_group=cpu))
    for step in ("preprocess", "postprocess"):
        _model(repo, mc.ModelConfig(name=step, backend="python", max_batch_size=64, instance_group=cpu))
    if pipeline == "ensemble":
        steps = [mc.ModelEnsembling.Step(model_name=name, model_version=-1)
                 for name in ("preprocess", "rater_onnx", "postprocess")]
        _model(repo, mc.ModelConfig(name="recommend", platform="ensemble", max_batch_size=64,
                                    ensemble_scheduling=mc.ModelEnsembling(step=steps)))
    else:
        _model(repo, mc.ModelConfig(name="recommend", backend="python", max_batch_size=64, instance_group=cpu))
    return repo


@pytest.fixture(scope="module", params=[False, True], ids=["cpu", "gpu"])
def rendered(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    out = root / "out"
    paths = write_kubernetes(_repository(root), replicas=2, gpu=request.param, out=out)
    return request.param, out, paths


def _load(out: Path, name: str) -> dict:
    return yaml.safe_load((out / name).read_text())


def test_writes_manifests_chart_and_inference_service(rendered):
    _, out, paths = rendered
    names = {p.relative_to(out).as_posix() for p in paths}
    assert set(MANIFESTS) <= names
    assert {"helm/aerec/Chart.yaml", "helm/aerec/values.yaml", "helm/aerec/templates/deployment.yaml",
            "kserve/inferenceservice.yaml", "prometheus-adapter-values.yaml", "README.md"} <= names
    assert all(p.is_file() for p in paths)


@pytest.mark.parametrize("name", MANIFESTS + ["servicemonitor.yaml"])
def test_manifests_pass_strict_schema_validation(rendered, name):
    _, out, _ = rendered
    cmd = [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.30",
           str(out / name)]
    if name == "servicemonitor.yaml":   # a Prometheus-operator CRD: no bundled schema, reported as such
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0 and "Couldn't find schema for kind ServiceMonitor" in result.stdout
        return
    for version in ("1.25", "1.37"):    # the oldest and newest schemas bundled
        assert kubernetes_validate.validate(_load(out, name), version, strict=True)


def test_strict_validation_rejects_an_unknown_field(rendered):
    _, out, _ = rendered
    deployment = _load(out, "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def test_deployment_runs_triton_on_the_repository_volume(rendered):
    gpu, out, _ = rendered
    deployment = _load(out, "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert container["args"] == ["tritonserver", "--model-repository=/models"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # A stopping pod serves on until it has left the Service (Triton fails requests from SIGTERM
    # on), and the grace period outlasts that delay plus Triton's 30 s exit timeout.
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_SECONDS)]
    assert pod["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + TRITON_EXIT_TIMEOUT_SECONDS
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == _load(out, "model-repository-pvc.yaml")["metadata"]["name"]
    limits = container["resources"]["limits"]
    assert limits["cpu"] and limits["memory"]
    assert ("nvidia.com/gpu" in limits) == gpu and limits.get("nvidia.com/gpu", "1") == "1"
    readme = (out / "README.md").read_text()
    assert ("KIND_GPU" in readme) == gpu and ("KIND_CPU instances: rater_onnx" in readme) == gpu


def test_service_selects_the_server_and_not_the_loader(rendered):
    _, out, _ = rendered
    selector = _load(out, "service.yaml")["spec"]["selector"]
    assert selector.items() <= _load(out, "deployment.yaml")["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= _load(out, "repository-loader.yaml")["metadata"]["labels"].items()
    assert {p["port"] for p in _load(out, "service.yaml")["spec"]["ports"]} == {8000, 8001, 8002}


def test_autoscaler_scales_on_the_queue_time_prometheus_adapter_serves(rendered):
    _, out, _ = rendered
    hpa = _load(out, "hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _load(out, "deployment.yaml")["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUE_METRIC
    (rule,) = _load(out, "prometheus-adapter-values.yaml")["rules"]["custom"]
    assert rule["name"]["as"] == QUEUE_METRIC
    # The steps' queue times over the ensemble's requests (tests/server/test_queue_metric.py
    # evaluates it on a live server): not an average with the ensemble's own ~0.
    assert ('nv_inference_queue_duration_us{<<.LabelMatchers>>,model=~"postprocess|preprocess|rater_onnx"}'
            in rule["metricsQuery"])
    assert 'nv_inference_request_success{<<.LabelMatchers>>,model="recommend"}' in rule["metricsQuery"]
    assert "avg(" not in rule["metricsQuery"] and "(1+" not in rule["metricsQuery"]


def test_chart_lints_clean_and_renders_the_plain_manifests(rendered):
    _, out, _ = rendered
    chart_dir = out / "helm" / "aerec"
    report = helm.lint(str(chart_dir), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []   # only "icon is recommended" (info)
    rendered_chart = helm.Chart.load(str(chart_dir)).render(name="aerec", namespace="default")
    for template, plain in (("deployment.yaml", "deployment.yaml"), ("service.yaml", "service.yaml"),
                            ("hpa.yaml", "hpa.yaml")):
        assert yaml.safe_load(rendered_chart[f"aerec/templates/{template}"]) == _load(out, plain), template
    assert yaml.safe_load(rendered_chart["aerec/templates/servicemonitor.yaml"]) is None   # off by default
    with_monitor = helm.Chart.load(str(chart_dir)).render({"serviceMonitor": {"enabled": True}}, name="aerec")
    assert yaml.safe_load(with_monitor["aerec/templates/servicemonitor.yaml"]) == _load(out, "servicemonitor.yaml")


def test_chart_values_change_the_rendered_deployment(rendered):
    _, out, _ = rendered
    chart = helm.Chart.load(str(out / "helm" / "aerec"))
    manifests = chart.render({"replicas": 5, "image": "registry.example/tritonserver:24.10-py3"}, name="aerec")
    deployment = yaml.safe_load(manifests["aerec/templates/deployment.yaml"])
    assert deployment["spec"]["replicas"] == 5
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/tritonserver:24.10-py3"
    assert kubernetes_validate.validate(deployment, "1.37", strict=True)


def _kserve_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.deploy.kserve_check", *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.slow  # three Python processes importing the kserve SDK: about 3 s
def test_inference_service_round_trips_through_the_kserve_sdk(rendered, tmp_path):
    if importlib.util.find_spec("kserve") is None:   # found, never imported here
        pytest.skip("the kserve SDK is not installed (dev extra)")
    gpu, out, _ = rendered
    isvc = _load(out, "kserve/inferenceservice.yaml")
    triton = isvc["spec"]["predictor"]["triton"]
    assert triton["storageUri"] == "pvc://aerec-model-repository" and triton["runtimeVersion"] == "24.10-py3"
    assert ("nvidia.com/gpu" in triton["resources"]["limits"]) == gpu
    # A stopping predictor pod serves on while it leaves the Service, as the Deployment's does.
    assert triton["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_SECONDS)]
    assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + TRITON_EXIT_TIMEOUT_SECONDS
    # A misspelt field and a wrongly typed value must be refused, not dropped.
    misspelt = dict(isvc, spec={"predictor": dict(isvc["spec"]["predictor"], tritn=triton)})
    (tmp_path / "misspelt.yaml").write_text(yaml.safe_dump(misspelt))
    wrong_type = yaml.safe_load(yaml.safe_dump(isvc))
    wrong_type["spec"]["predictor"]["triton"]["resources"]["limits"]["cpu"] = 2
    (tmp_path / "wrong_type.yaml").write_text(yaml.safe_dump(wrong_type))

    ok = _kserve_check(out / "kserve" / "inferenceservice.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "V1beta1InferenceService aerec (triton runtime 24.10-py3)" in ok.stdout
    bad = _kserve_check(tmp_path / "misspelt.yaml")
    assert bad.returncode == 1 and "V1beta1PredictorSpec has no field tritn" in bad.stderr
    bad = _kserve_check(tmp_path / "wrong_type.yaml")
    assert bad.returncode == 1 and "V1ResourceRequirements" in bad.stderr


def test_refuses_a_missing_folder_a_repository_without_recommend_and_the_fused_pipeline(tmp_path):
    with pytest.raises(DeployError, match="no such repository folder"):
        render_kubernetes(tmp_path / "absent", 1, False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeployError, match="holds no `recommend` model"):
        render_kubernetes(tmp_path / "empty", 1, False)
    with pytest.raises(DeployError, match="fused pipeline .* rebuild the repository without --tuned"):
        render_kubernetes(_repository(tmp_path, "fused"), 1, False)
    assert issubclass(DeployError, ValueError)


def test_refuses_replica_counts_out_of_order(tmp_path):
    repo = _repository(tmp_path)
    with pytest.raises(DeployError, match="replicas 0"):
        render_kubernetes(repo, 0, False)
    with pytest.raises(DeployError, match="max_replicas 2"):
        render_kubernetes(repo, 3, False, max_replicas=2)


def test_cli_deploy_kubernetes_writes_the_files_and_names_a_bad_repository(tmp_path):
    """`aerec deploy kubernetes` is the library call behind a command line: it lists what it
    wrote, and a folder that is not a repository is an error naming it (exit status 2)."""
    from typer.testing import CliRunner

    from cli.main import app
    repo = _repository(tmp_path / "built")
    ok = CliRunner().invoke(app, ["deploy", "kubernetes", "--repository", str(repo), "--replicas", "2",
                                  "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert str(tmp_path / "out" / "deployment.yaml") in ok.output
    assert (tmp_path / "out" / "helm" / "aerec" / "Chart.yaml").is_file()
    bad = CliRunner().invoke(app, ["deploy", "kubernetes", "--repository", str(tmp_path / "nowhere"),
                                   "--out", str(tmp_path / "out2")])
    assert bad.exit_code == 2 and "nowhere" in bad.output


def _catalogue_repository(root: Path, n_items: int) -> Path:
    """The committed model_repository/ configs (the ensemble as `aerec repository` writes it),
    their catalogue dimension rewritten to `n_items`."""
    repo = root / f"repo{n_items}"
    for config in (ROOT / "model_repository").glob("*/config.pbtxt"):
        (repo / config.parent.name).mkdir(parents=True)
        (repo / config.parent.name / "config.pbtxt").write_text(
            config.read_text().replace("dims: 1682\n", f"dims: {n_items}\n"))
    return repo


def _mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def test_dev_shm_is_memory_backed_and_sized_for_the_catalogue_in_both_deployments(tmp_path):
    """A 17,770-item catalogue's 64-user batches outgrow a container's 64 MiB /dev/shm ("Failed
    to increase the shared memory pool size"): the Deployment and the InferenceService both mount
    a memory-backed volume there, sized from the repository's configs."""
    sizes = {}
    for n_items in (1682, 17770):
        files = render_kubernetes(_catalogue_repository(tmp_path, n_items), 1, False)
        pod = yaml.safe_load(files["deployment.yaml"])["spec"]["template"]["spec"]
        predictor = yaml.safe_load(files["kserve/inferenceservice.yaml"])["spec"]["predictor"]
        limits = []
        for volumes, mounts in ((pod["volumes"], pod["containers"][0]["volumeMounts"]),
                                (predictor["volumes"], predictor["triton"]["volumeMounts"])):
            (mount,) = [m for m in mounts if m["mountPath"] == "/dev/shm"]
            (volume,) = [v for v in volumes if v["name"] == mount["name"]]
            assert volume["emptyDir"]["medium"] == "Memory"
            limits.append(volume["emptyDir"]["sizeLimit"])
        assert limits[0] == limits[1]
        sizes[n_items] = _mib(limits[0])
        assert kubernetes_validate.validate(yaml.safe_load(files["deployment.yaml"]), "1.37", strict=True)
    # One full batch of the Python steps, written out from the contract: preprocess takes 64 rows
    # of up to 10,000 (int64 id, fp32 rating) pairs and gives the dense fp32 vector; postprocess
    # takes three dense vectors and may answer TOP_K = n_items ids, scores, ratings and titles.
    def one_batch(n):
        pre = 64 * ((8 + 10_000 * 12 + 4) + (n * 4 + 4 + 4))
        post = 64 * ((3 * n * 4 + 4) + (n * (8 + 4 + 4 + 260) + 4))
        return pre + post
    for n_items, mib in sizes.items():
        assert mib * 2**20 >= 2 * one_batch(n_items) > 64 * 2**20   # above Docker's default
    assert sizes[17770] > 5 * sizes[1682]                       # it follows the catalogue


def test_shm_size_can_be_set(tmp_path):
    files = render_kubernetes(_catalogue_repository(tmp_path, 1682), 1, False, shm="2Gi")
    predictor = yaml.safe_load(files["kserve/inferenceservice.yaml"])["spec"]["predictor"]
    assert predictor["volumes"][0]["emptyDir"]["sizeLimit"] == "2Gi"


def test_serve_warns_of_a_dev_shm_too_small_for_the_repository(tmp_path):
    """`aerec serve` measures /dev/shm first: a 17,770-item repository under Docker's 64 MiB
    default gets a warning naming both sizes and the flag to give (F-32: 34 of 40 requests of
    eight clients failed there, none under the size named); where it fits, none."""
    large, small = _catalogue_repository(tmp_path / "large", 17770), _catalogue_repository(tmp_path / "small", 1682)
    need = shared_memory_bytes(large, python_models_only=False)
    warning = dev_shm_warning(large, free_bytes=64 * 2**20)
    assert warning.startswith("/dev/shm has 64 MiB free") and f"up to {need / 2**20:,.0f} MiB" in warning
    assert f"--shm-size={-(-need // 2**20)}m" in warning and "Failed to increase the shared memory pool size" in warning
    assert "on 2 replicas" in dev_shm_warning(large, 2, free_bytes=need)   # each replica has pools of its own
    assert dev_shm_warning(large, free_bytes=need) is None
    small_need = shared_memory_bytes(small, python_models_only=False)
    assert small_need < need / 5 and dev_shm_warning(small, free_bytes=small_need) is None
