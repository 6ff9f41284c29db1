"""Kubernetes objects, a Helm chart and a KServe InferenceService that serve a built repository
with NVIDIA's Triton container, shaped as Triton's own k8s-onprem chart: a Deployment reading the
repository from a volume, health probes, a Service, and a HorizontalPodAutoscaler on Triton's
queue time a request waits, which prometheus-adapter computes from Triton's metrics.

Plain manifests are dumped from dicts with PyYAML; the chart's templates are the only text
templates, and a test holds the Deployment they render equal to the plain one.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import text_format

from server.deploy import grafana
from server.deploy.shared_memory import shared_memory_bytes, size_limit

IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"   # Triton 2.51, the embedded server's version
MODEL = "recommend"                                # the model clients call (serving/contract.py)
MOUNT = "/models"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
QUEUE_METRIC = "avg_time_queue_us"
QUEUE_WINDOW = "30s"


def queue_rule(steps: list[str]) -> dict:
    """prometheus-adapter's rule serving QUEUE_METRIC: the queue time one `recommend` request
    waits, in microseconds, over the last QUEUE_WINDOW, per pod.

    `steps` are the ensemble's composing models (ensemble_steps). Triton counts queue time per
    model: the ensemble itself reports about 0 (its requests never queue) and each step queues
    every ensemble request once. So the rule sums the steps' queue-time deltas and divides by the
    ensemble's request delta. Triton's k8s-onprem rule, avg(dq/(1+dn)) over every model, averages
    the steps with the ensemble's zero instead: a fifth of the real wait for four steps, so a
    saturated pod never reached the target. clamp_min(..., 1) keeps an idle pod at 0 without
    biasing a busy one as `1+` does. Raises DeployError for an empty `steps`."""
    if not steps:
        raise DeployError(f"`{MODEL}` has no composing models: nothing queues, nothing to scale on")
    step_match = "|".join(sorted(steps))
    queued = (f'sum(delta(nv_inference_queue_duration_us{{<<.LabelMatchers>>,model=~"{step_match}"}}'
              f"[{QUEUE_WINDOW}])) by (<<.GroupBy>>)")
    requests = (f'sum(delta(nv_inference_request_success{{<<.LabelMatchers>>,model="{MODEL}"}}'
                f"[{QUEUE_WINDOW}])) by (<<.GroupBy>>)")
    return {
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
        "metricsQuery": f"{queued}/clamp_min({requests},1)",
    }


LOADER_IMAGE = "busybox:1.36"   # has tar, which `kubectl cp` needs
# Stopping a pod: the kubelet runs preStop, then sends SIGTERM, while the endpoint controller
# takes the pod out of the Service in parallel. Triton fails every request from its SIGTERM on
# ("Server is stopping", "... has no available versions"), so it must keep serving until the
# Service no longer routes to it: PRE_STOP_SECONDS. The grace period covers that delay plus
# Triton's own exit timeout (--exit-timeout-secs, 30 s by default) before the kubelet SIGKILLs.
PRE_STOP_SECONDS = 15
TRITON_EXIT_TIMEOUT_SECONDS = 30
GRACE_SECONDS = PRE_STOP_SECONDS + TRITON_EXIT_TIMEOUT_SECONDS + 15


def _lifecycle() -> dict:
    """A Triton container's lifecycle: the preStop sleep (a new dict each time, so that one YAML
    document never holds it twice as an anchor)."""
    return {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}}


class DeployError(ValueError):
    """A repository or a setting that cannot be deployed to NVIDIA's container."""


def _read_config(path: Path):
    from tritonclient.grpc import model_config_pb2   # here: kserve_check imports this module's neighbours
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise DeployError(f"{path}: not a Triton model config: {e}") from e


def check_repository(repository: Path) -> list[str]:
    """Checks that `repository` can be served by NVIDIA's container.

    Returns the names of the models whose instance groups ask for KIND_CPU (on a GPU node they
    should say KIND_GPU). Raises DeployError (a ValueError) when the folder is missing, holds no
    `recommend` model, or holds the fused pipeline, which runs only on the embedded server."""
    repository = Path(repository)
    if not repository.is_dir():
        raise DeployError(f"{repository}: no such repository folder; build one with `aerec repository RUN`")
    config = repository / MODEL / "config.pbtxt"
    if not config.is_file():
        raise DeployError(f"{repository}: holds no `{MODEL}` model ({config} missing); "
                          "build the repository with `aerec repository RUN`")
    recommend = _read_config(config)
    if recommend.platform != "ensemble":
        raise DeployError(
            f"{config}: `{MODEL}` is the fused pipeline (backend {recommend.backend!r}), built with --tuned: "
            "its Python model imports onnx and onnxruntime, which NVIDIA's container lacks, so it runs "
            "only on the embedded server (`aerec serve`); rebuild the repository without --tuned")
    from tritonclient.grpc import model_config_pb2
    cpu_models = []
    for path in sorted(repository.glob("*/config.pbtxt")):
        model = _read_config(path)
        if model.platform == "onnxruntime_onnx" and any(
                g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in model.instance_group):
            cpu_models.append(path.parent.name)
    return cpu_models


def ensemble_steps(repository: Path) -> list[str]:
    """The names of the models `recommend`'s ensemble runs (its ensemble_scheduling steps), in
    order, read from `repository`/recommend/config.pbtxt. Raises DeployError as check_repository."""
    config = _read_config(Path(repository) / MODEL / "config.pbtxt")
    return [step.model_name for step in config.ensemble_scheduling.step]


def _values(name, image, replicas, max_replicas, gpu, cpu, memory, storage, queue_target_us, shm) -> dict:
    """The chart's values.yaml, and the one source the plain manifests are built from."""
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if gpu:
        resources["limits"]["nvidia.com/gpu"] = "1"   # quantities are strings in the API
    return {
        "name": name,
        "image": image,
        "replicas": replicas,
        # requests equal to limits: Guaranteed QoS, so a latency-bound server is never squeezed
        "resources": resources,
        "sharedMemory": shm,   # /dev/shm for the Python backend's stubs (a container's default is 64 MiB)
        "modelRepository": {"claimName": f"{name}-model-repository"},
        "service": {"type": "ClusterIP"},
        "autoscaling": {"enabled": True, "minReplicas": replicas, "maxReplicas": max_replicas,
                        "queueTimeTargetUs": str(queue_target_us)},
        "serviceMonitor": {"enabled": False},
        "storage": storage,
    }


def _labels(v: dict, component: str = "tritonserver") -> dict:
    return {"app.kubernetes.io/name": v["name"], "app.kubernetes.io/component": component}


def _probe(path: str, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def deployment(v: dict) -> dict:
    """The Deployment of NVIDIA's Triton image: readiness is Triton's (every model loaded), the
    startup probe allows five minutes for loading, the repository is mounted read-only, and a
    stopping pod keeps serving PRE_STOP_SECONDS while it leaves the Service."""
    container = {
        "name": "tritonserver",
        "image": v["image"],
        "args": ["tritonserver", f"--model-repository={MOUNT}"],
        "ports": [{"name": port, "containerPort": number} for port, number in PORTS.items()],
        "startupProbe": _probe("/v2/health/ready", 10, 30),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "lifecycle": _lifecycle(),
        "resources": v["resources"],
        "volumeMounts": [{"name": "model-repository", "mountPath": MOUNT, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": v["name"], "labels": _labels(v)},
        "spec": {
            "replicas": v["replicas"],
            "selector": {"matchLabels": _labels(v)},
            "template": {
                "metadata": {"labels": _labels(v),
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(PORTS["metrics"]),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "containers": [container],
                    "volumes": [
                        {"name": "model-repository",
                         "persistentVolumeClaim": {"claimName": v["modelRepository"]["claimName"], "readOnly": True}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": v["sharedMemory"]}},
                    ],
                },
            },
        },
    }


def service(v: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": v["name"], "labels": _labels(v)},
        "spec": {"type": v["service"]["type"], "selector": _labels(v),
                 "ports": [{"name": port, "port": number, "targetPort": port} for port, number in PORTS.items()]},
    }


def autoscaler(v: dict) -> dict:
    a = v["autoscaling"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": v["name"], "labels": _labels(v)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": v["name"]},
            "minReplicas": a["minReplicas"],
            "maxReplicas": a["maxReplicas"],
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": a["queueTimeTargetUs"]}}}],
        },
    }


def repository_claim(v: dict) -> dict:
    """ReadWriteMany: every replica mounts it, on any node, and the loader writes it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": v["modelRepository"]["claimName"], "labels": _labels(v, "model-repository")},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": v["storage"]}}},
    }


def repository_loader(v: dict) -> dict:
    """A pod that mounts the claim writable, for `kubectl cp`; its labels differ from the
    server's, so the Service never sends it requests."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{v['name']}-repository-loader", "labels": _labels(v, "repository-loader")},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "loader", "image": LOADER_IMAGE, "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "model-repository", "mountPath": MOUNT}]}],
            "volumes": [{"name": "model-repository",
                         "persistentVolumeClaim": {"claimName": v["modelRepository"]["claimName"]}}],
        },
    }


def service_monitor(v: dict) -> dict:
    """For the Prometheus operator (kube-prometheus-stack): scrape Triton's metrics port."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": v["name"], "labels": _labels(v)},
        "spec": {"selector": {"matchLabels": _labels(v)}, "endpoints": [{"port": "metrics", "interval": "15s"}]},
    }


def inference_service(v: dict) -> dict:
    """The KServe InferenceService with the Triton runtime, as the plain dict the API server reads.

    KServe mounts `pvc://<claim>` at /mnt/models and starts Triton there itself; RawDeployment
    mode needs no Knative. Built as a dict, not through the kserve SDK: the SDK registers KServe's
    `inference.*` protobuf messages, which clash with tritonclient's in one process;
    `python -m server.deploy.kserve_check` holds the dict to the SDK's model classes."""
    tag = v["image"].rsplit("/", 1)[-1].partition(":")[2]
    # kserve-container: the name KServe gives the predictor's container (the SDK's class needs one)
    triton = {"name": "kserve-container", "protocolVersion": "v2",
              "resources": {"limits": v["resources"]["limits"], "requests": v["resources"]["requests"]},
              "storageUri": f"pvc://{v['modelRepository']['claimName']}",
              # the same memory-backed /dev/shm as the Deployment's (KServe mounts none)
              "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
              # as the Deployment's: serve on while the pod leaves the Service (see PRE_STOP_SECONDS)
              "lifecycle": _lifecycle()}
    if tag:
        triton["runtimeVersion"] = tag
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
                     "labels": _labels(v), "name": v["name"]},
        "spec": {"predictor": {"maxReplicas": v["autoscaling"]["maxReplicas"],
                               "minReplicas": v["autoscaling"]["minReplicas"],
                               "terminationGracePeriodSeconds": GRACE_SECONDS,
                               "triton": triton,
                               "volumes": [{"name": "dshm",
                                            "emptyDir": {"medium": "Memory", "sizeLimit": v["sharedMemory"]}}]}},
    }


def _dump(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


# Helm templates: Triton's constants (ports, probes, mount) written out, everything a user
# tunes read from values.yaml.
HELPERS = """{{- define "aerec.labels" -}}
app.kubernetes.io/name: {{ .Values.name }}
app.kubernetes.io/component: tritonserver
{{- end }}
{{- define "aerec.selector" -}}
matchLabels:
  {{- include "aerec.labels" . | nindent 2 }}
{{- end }}
{{- define "aerec.metadata" -}}
name: {{ .Values.name }}
labels:
  {{- include "aerec.labels" . | nindent 2 }}
{{- end }}
"""

DEPLOYMENT_TEMPLATE = """apiVersion: apps/v1
kind: Deployment
metadata:
  {{- include "aerec.metadata" . | nindent 2 }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    {{- include "aerec.selector" . | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "aerec.labels" . | nindent 8 }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "8002"
        prometheus.io/path: /metrics
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: tritonserver
          image: {{ .Values.image | quote }}
          args:
            - tritonserver
            - --model-repository=/models
          ports:
            - name: http
              containerPort: 8000
            - name: grpc
              containerPort: 8001
            - name: metrics
              containerPort: 8002
          startupProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: 10
            failureThreshold: 30
          readinessProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: 5
            failureThreshold: 3
          livenessProbe:
            httpGet:
              path: /v2/health/live
              port: http
            periodSeconds: 10
            failureThreshold: 3
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "15"]
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          volumeMounts:
            - name: model-repository
              mountPath: /models
              readOnly: true
            - name: dshm
              mountPath: /dev/shm
      volumes:
        - name: model-repository
          persistentVolumeClaim:
            claimName: {{ .Values.modelRepository.claimName }}
            readOnly: true
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ .Values.sharedMemory }}
"""

SERVICE_TEMPLATE = """apiVersion: v1
kind: Service
metadata:
  {{- include "aerec.metadata" . | nindent 2 }}
spec:
  type: {{ .Values.service.type }}
  selector:
    {{- include "aerec.labels" . | nindent 4 }}
  ports:
    - name: http
      port: 8000
      targetPort: http
    - name: grpc
      port: 8001
      targetPort: grpc
    - name: metrics
      port: 8002
      targetPort: metrics
"""

HPA_TEMPLATE = """{{- if .Values.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  {{- include "aerec.metadata" . | nindent 2 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .Values.name }}
  minReplicas: {{ .Values.autoscaling.minReplicas }}
  maxReplicas: {{ .Values.autoscaling.maxReplicas }}
  metrics:
    - type: Pods
      pods:
        metric:
          name: avg_time_queue_us
        target:
          type: AverageValue
          averageValue: {{ .Values.autoscaling.queueTimeTargetUs | quote }}
{{- end }}
"""

SERVICE_MONITOR_TEMPLATE = """{{- if .Values.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  {{- include "aerec.metadata" . | nindent 2 }}
spec:
  selector:
    {{- include "aerec.selector" . | nindent 4 }}
  endpoints:
    - port: metrics
      interval: 15s
{{- end }}
"""


def _chart(v: dict, app_version: str) -> dict[str, str]:
    chart = {"apiVersion": "v2", "name": "aerec", "description": "aerec recommenders on NVIDIA Triton Inference Server",
             "type": "application", "version": "0.1.0", "appVersion": app_version}
    values = {key: value for key, value in v.items() if key != "storage"}   # the claim is made outside the chart
    return {"Chart.yaml": _dump(chart), "values.yaml": _dump(values),
            "templates/_helpers.tpl": HELPERS, "templates/deployment.yaml": DEPLOYMENT_TEMPLATE,
            "templates/service.yaml": SERVICE_TEMPLATE, "templates/hpa.yaml": HPA_TEMPLATE,
            "templates/servicemonitor.yaml": SERVICE_MONITOR_TEMPLATE}


def _readme(v: dict, gpu: bool, cpu_models: list[str]) -> str:
    claim, loader = v["modelRepository"]["claimName"], f"{v['name']}-repository-loader"
    gpu_note = ("The Deployment asks for `nvidia.com/gpu: 1` (the NVIDIA device plugin must run on the "
                "node). " + (f"These models ask for KIND_CPU instances: {', '.join(cpu_models)}; change "
                             "their `instance_group` kind to KIND_GPU before copying, or they run on the CPU."
                             if cpu_models else "Every network asks for GPU instances."))
    return f"""# Serving aerec on Kubernetes

Rendered by `server.deploy.render_kubernetes`; checked offline, never applied here.
Guide: docs/deploy.md in the aerec repository.

1. Put the repository on the claim `{claim}` (a ReadWriteMany volume, e.g. NFS):

       kubectl apply -f model-repository-pvc.yaml -f repository-loader.yaml
       kubectl wait --for=condition=Ready pod/{loader}
       kubectl cp REPOSITORY/. {loader}:{MOUNT}
       kubectl delete pod {loader}

2. Serve: either the plain manifests

       kubectl apply -f deployment.yaml -f service.yaml -f hpa.yaml

   or the chart (the same Deployment, Service and autoscaler)

       helm install aerec helm/aerec

   or KServe's Triton runtime: `kubectl apply -f kserve/inferenceservice.yaml`.

3. Autoscaling on queue time needs Prometheus scraping Triton's metrics port (the pods carry
   `prometheus.io/*` annotations; with the Prometheus operator apply servicemonitor.yaml) and
   prometheus-adapter serving `{QUEUE_METRIC}`:

       helm install prometheus-adapter prometheus-community/prometheus-adapter \\
         -f prometheus-adapter-values.yaml --set prometheus.url=http://PROMETHEUS-SERVICE

The repository's `{MODEL}` is the ensemble (preprocess -> networks -> postprocess): NVIDIA's
container runs it natively. The fused pipeline (`aerec repository --tuned`) imports onnxruntime
inside a Python model, which the container lacks; it serves only on the embedded server and is
refused here. After copying a new repository, `kubectl rollout restart deployment/{v['name']}`.

{gpu_note if gpu else "CPU only: no GPU is requested."}
"""


def render_kubernetes(repository: Path, replicas: int, gpu: bool, image: str = IMAGE, *, name: str = "aerec",
                      max_replicas: int | None = None, cpu: str = "2", memory: str = "4Gi",
                      storage: str = "5Gi", queue_target_us: int = 500, shm: str | None = None) -> dict[str, str]:
    """Everything needed to serve `repository` on Kubernetes, as text.

    `replicas` is the Deployment's count and the autoscaler's floor; its ceiling is
    `max_replicas` (default 2 x replicas). The autoscaler adds pods when the queue time a request
    waits across the ensemble's steps (queue_rule), averaged over pods, exceeds `queue_target_us`
    (default 500 us: five times the repository's default 100 us batching delay, so pods are added
    when requests wait for capacity, not for a batch).
    `shm` sizes the memory-backed /dev/shm of the Deployment and the InferenceService (a
    Kubernetes quantity); by default what the repository's Python steps may take at most for
    its catalogue, batch sizes and instances (server.deploy.shared_memory).

    Returns {relative file name: text}: the plain manifests (model-repository-pvc.yaml,
    repository-loader.yaml, deployment.yaml, service.yaml, hpa.yaml, servicemonitor.yaml),
    prometheus-adapter-values.yaml, README.md, the chart under helm/aerec/ and
    kserve/inferenceservice.yaml. Raises DeployError (a ValueError) for a missing or fused
    repository (see check_repository) or replica counts below 1 or out of order."""
    cpu_models = check_repository(repository)
    max_replicas = 2 * replicas if max_replicas is None else max_replicas
    if replicas < 1 or max_replicas < replicas:
        raise DeployError(f"replicas {replicas}, max_replicas {max_replicas}: need 1 <= replicas <= max_replicas")
    if shm is None:
        shm = size_limit(shared_memory_bytes(repository))
    v = _values(name, image, replicas, max_replicas, gpu, cpu, memory, storage, queue_target_us, shm)
    files = {
        "model-repository-pvc.yaml": _dump(repository_claim(v)),
        "repository-loader.yaml": _dump(repository_loader(v)),
        "deployment.yaml": _dump(deployment(v)),
        "service.yaml": _dump(service(v)),
        "hpa.yaml": _dump(autoscaler(v)),
        "servicemonitor.yaml": _dump(service_monitor(v)),
        "prometheus-adapter-values.yaml": _dump({"rules": {"default": False,
                                                           "custom": [queue_rule(ensemble_steps(repository))]}}),
        "kserve/inferenceservice.yaml": _dump(inference_service(v)),
        "README.md": _readme(v, gpu, cpu_models),
        grafana.DASHBOARD_FILE: grafana.dashboard_json(),   # the recommendation metrics and Triton's
    }
    app_version = image.rsplit("/", 1)[-1].partition(":")[2] or "latest"
    files.update({f"helm/aerec/{path}": text for path, text in _chart(v, app_version).items()})
    return files


def write_kubernetes(repository: Path, replicas: int, gpu: bool, out: Path) -> list[Path]:
    """Writes render_kubernetes's files under `out` (the chart in out/helm/aerec/, the
    InferenceService in out/kserve/inferenceservice.yaml), replacing files of the same name.

    Returns the paths written. Raises DeployError (a ValueError) as render_kubernetes does,
    before anything is written."""
    files = render_kubernetes(Path(repository), replicas, gpu)
    written = []
    for relative, text in files.items():
        path = Path(out) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
