"""Fill a Triton model repository from exported runs: the one place that knows Triton's layout.

A repository serves a ranker (a top-N model: its scores order the list), a rater (a rating
model: its predictions are the ratings shown), or both side by side on the same input vector.
Every config starts from its template in builder/config_templates/ (read and written as
`model_config_pb2.ModelConfig` messages, never as text) and gets this build's values: the
catalogue's size, the served networks, the tuning. The Python models' model.py is copied from
there too, with the serving package vendored beside it, so the repository is self-contained;
builder.templates locates both in the installed package.
Each build adds a numbered version beside the ones already served; the whole repository is
built in a temporary folder, its configs parsed back, then swapped in, so a failure leaves the
old one intact.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.config import TrainConfig, from_dict
from builder.evaluate import below_popularity
from builder.models import ITEM_BASED, TOP_N
from builder.models.popularity import item_counts
from builder.run_folder import RunDataError, load_run_dataset
from builder import previous, templates
from builder.tensorrt_plans import plan_meta
from serving import contract
from serving.contract import NETWORK_INPUT as INPUT, NETWORK_OUTPUT as OUTPUT
from serving.blocklist import blocklist_path, load_blocklist, save_blocklist
from serving.fallback import POPULARITY_FILE
from serving.session_options import SPINNING, THREADS  # the keys it reads back

log = logging.getLogger(__name__)

# The config.pbtxt templates (builder.templates locates them in the installed package). They
# live apart from model_repository/ because a build writes there (by default): a tuned or
# single-network build rewrites recommend/ and the steps' configs, and the next build must still
# start from the full templates.
TEMPLATES = templates.TEMPLATES
SERVING = templates.SERVING   # vendored into every Python model's version folder
TEMPLATE = {"ranker": "ranker_onnx", "rater": "rater_onnx", "preprocess": "preprocess",
            "postprocess": "postprocess", "ensemble": "recommend", "fused": "recommend_fused",
            "similar": "similar"}

VARIANTS = {"onnx": "model_fp32.onnx", "onnx_fp16": "model_fp16.onnx", "onnx_int8": "model_int8.onnx"}
PIPELINES = ("ensemble", "fused")
DEVICES = ("cpu", "gpu")
# On a GPU: each variant's precision, its TensorRT plan (builder.tensorrt_plans.build_plans) and the
# ONNX graph ONNX Runtime's TensorRT execution provider parses (TensorRT's own ONNX parser: the
# int8 graph with float biases, builder.export.quantize_int8).
GPU_PRECISION = {"onnx": "FP32", "onnx_fp16": "FP16", "onnx_int8": "INT8"}
GPU_ONNX = {"onnx": "model_fp32.onnx", "onnx_fp16": "model_fp16.onnx", "onnx_int8": "model_int8_trt.onnx"}
PLANS = {"onnx": "model_fp32.plan", "onnx_fp16": "model_fp16.plan", "onnx_int8": "model_int8.plan"}


class RepositoryError(ValueError):
    pass


@dataclass
class Tuning:
    """The serving knobs `perf` searches over; `aerec repository --tuned` writes the best."""
    network_instances: int = 1
    network_queue_delay_us: int = 100
    preferred_batch_sizes: list[int] = field(default_factory=list)
    ort_threads: int = 0              # 0: ONNX Runtime's default (all cores)
    # Whether ONNX Runtime's idle pool threads spin waiting for work (its default) or sleep: a
    # spinning thread holds a core the gRPC threads and a co-located client need between requests.
    ort_spinning: bool = True
    step_instances: int = 1           # preprocess and postprocess (and the fused model)
    step_queue_delay_us: int = 100
    # "ensemble": preprocess -> network -> postprocess, three models (runs anywhere, the network
    # natively in NVIDIA's container); "fused": the same three steps in one Python model, one
    # stub hop instead of three (the embedded CPU server: it needs onnxruntime in the stub).
    pipeline: str = "ensemble"

    @classmethod
    def load(cls, path: Path) -> "Tuning":
        path = Path(path)
        if path.is_dir():
            path = path / "tuned.json"
        if not path.is_file():
            raise RepositoryError(f"{path}: no tuned configuration; run `aerec perf` first")
        raw = json.loads(path.read_text())
        try:
            return from_dict(cls, raw.get("tuning", raw), error=RepositoryError, what="tuning key")
        except RepositoryError as e:
            raise RepositoryError(f"{path}: {e}") from None

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise RepositoryError(f"pipeline must be one of {PIPELINES}, got {self.pipeline!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# -- configs: template + this build's values --------------------------------------------------
def template(kind: str) -> model_config_pb2.ModelConfig:
    """The config.pbtxt template for `kind` (a key of TEMPLATE), parsed. Raises RepositoryError
    when it is missing or does not parse."""
    path = TEMPLATES / f"{TEMPLATE[kind]}.pbtxt"
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise RepositoryError(f"{path}: not a readable model config template ({e})") from e


def config_text(config: model_config_pb2.ModelConfig, kind: str) -> str:
    """config.pbtxt's text: a config equal to its template is the template's own text, comments
    included (so a build with the template's values leaves the committed file as it was)."""
    path = TEMPLATES / f"{TEMPLATE[kind]}.pbtxt"
    if config == template(kind):
        return path.read_text()
    return text_format.MessageToString(config)


def _tensor_dims(tensors, names, n_items: int) -> None:
    for t in tensors:
        if t.name in names:
            t.dims[:] = [n_items]


def _id_types(config, ids: tuple[str, str]) -> None:
    """The id tensors' data_type as the served catalogues have them: `ids` = (users', items')
    contract types (INT_ID or STRING_ID, see contract.id_type). Inputs and outputs alike."""
    user, item = ids
    for t in (*config.input, *config.output):
        if t.name in contract.USER_ID_TENSORS:
            t.data_type = model_config_pb2.DataType.Value(user)
        elif t.name in contract.ITEM_ID_TENSORS:
            t.data_type = model_config_pb2.DataType.Value(item)


INT_IDS = (contract.INT_ID, contract.INT_ID)   # the templates' id types


def served_id_types(repo: Path) -> tuple[str, str]:
    """(users', items') id types of the newest preprocess version of a built repository, read
    from its user_ids.npy / item_ids.npy (INT_IDS when it has none)."""
    folder = Path(repo) / "preprocess"
    if not _versions(folder):
        return INT_IDS
    vdir = _latest(folder)
    if not (vdir / "item_ids.npy").is_file():
        return INT_IDS
    load = lambda name: np.load(vdir / name, mmap_mode="r", allow_pickle=False)  # noqa: E731
    return contract.id_type(load("user_ids.npy")), contract.id_type(load("item_ids.npy"))


def _keep(repeated, keep) -> None:
    """Remove the entries of a repeated field for which keep(entry) is false, in place."""
    kept = [m for m in repeated if keep(m)]
    del repeated[:]
    repeated.extend(kept)


def _schedule(config, delay_us: int, instances: int, preferred=()) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    config.dynamic_batching.preferred_batch_size[:] = list(preferred)
    config.instance_group[0].count = instances


def _ort_parameters(config, t: Tuning) -> None:
    """The native ONNX Runtime backend's parameter names; serving.session_options reads them."""
    for key in (THREADS, SPINNING):
        if key in config.parameters:
            del config.parameters[key]
    if t.ort_threads:
        config.parameters[THREADS].string_value = str(t.ort_threads)
    if not t.ort_spinning:
        config.parameters[SPINNING].string_value = "0"


def network_config_message(name: str, n_items: int, tuning: Tuning | None = None,
                           serving: dict | None = None) -> model_config_pb2.ModelConfig:
    """A network's config (ranker_onnx's template, rater_onnx's for a name starting "rater"):
    `name`, input and output [n_items], the tuning's batching, instances and ORT parameters.

    `serving` (default: the CPU, ONNX Runtime): {"device": "cpu" | "gpu", "platform":
    "onnxruntime_onnx" | "tensorrt_plan", "precision": "FP32" | "FP16" | "INT8"}. On a GPU the
    instances are KIND_GPU; a tensorrt_plan network drops ONNX Runtime's parameters; an ONNX
    Runtime network gets the TensorRT execution accelerator at `precision` (Triton's ONNX Runtime
    backend, "ONNX Runtime with TensorRT optimization": optimization.execution_accelerators.
    gpu_execution_accelerator {name: "tensorrt", parameters {precision_mode ...}}), CUDA being
    its fallback for what TensorRT does not take."""
    t, srv = tuning or Tuning(), {"device": "cpu", "platform": "onnxruntime_onnx", "precision": "FP32",
                                  **(serving or {})}
    config = template("rater" if name.startswith("rater") else "ranker")
    config.name = name
    _tensor_dims(config.input, {INPUT}, n_items)
    _tensor_dims(config.output, {OUTPUT}, n_items)
    _schedule(config, t.network_queue_delay_us, t.network_instances, t.preferred_batch_sizes)
    if srv["platform"] == "tensorrt_plan":
        config.platform = "tensorrt_plan"
    else:
        _ort_parameters(config, t)
    if srv["device"] == "gpu":
        for group in config.instance_group:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
        if srv["platform"] == "onnxruntime_onnx":
            trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            trt.parameters["precision_mode"] = srv["precision"]
            trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return config


def network_config(name: str, n_items: int, tuning: Tuning | None = None) -> str:
    """config.pbtxt text for a network: platform onnxruntime_onnx runs unchanged on NVIDIA's
    container (native backend) and on the embedded server (our Python-based backend)."""
    return text_format.MessageToString(network_config_message(name, n_items, tuning))


def preprocess_config(n_items: int, tuning: Tuning | None = None,
                      ids: tuple[str, str] = INT_IDS) -> model_config_pb2.ModelConfig:
    """`ids`: (users', items') id types (see _id_types)."""
    t = tuning or Tuning()
    config = template("preprocess")
    _tensor_dims(config.output, {contract.DENSE, contract.BLOCKED}, n_items)
    _id_types(config, ids)
    _schedule(config, t.step_queue_delay_us, t.step_instances)
    return config


def _served_outputs(config, rater: bool) -> None:
    """PREDICTED_RATINGS only where a rater is served: a ranker alone has no ratings to show."""
    if not rater:
        _keep(config.output, lambda o: o.name != contract.PREDICTED_RATINGS)


def postprocess_config(n_items: int, tuning: Tuning | None = None, ranker: bool = False,
                       rater: bool = True, ids: tuple[str, str] = INT_IDS) -> model_config_pb2.ModelConfig:
    """Inputs: the served networks' outputs (RANKER_SCORES, RATER_PREDICTIONS), DENSE, TOP_K.
    `ids`: (users', items') id types (RECOMMENDED_IDS is the items')."""
    t = tuning or Tuning()
    config = template("postprocess")
    _id_types(config, ids)
    absent = {name for name, on in ((contract.RANKER_SCORES, ranker), (contract.RATER_PREDICTIONS, rater)) if not on}
    _keep(config.input, lambda i: i.name not in absent)
    _tensor_dims(config.input, {contract.RANKER_SCORES, contract.RATER_PREDICTIONS, contract.DENSE, contract.BLOCKED},
                 n_items)
    _served_outputs(config, rater)
    _schedule(config, t.step_queue_delay_us, t.step_instances)
    return config


def ensemble_config(ranker: str | None, rater: str | None,
                    ids: tuple[str, str] = INT_IDS) -> model_config_pb2.ModelConfig:
    """The template's ensemble with the served networks (`ranker`/`rater`: their model names, at
    least one) in the network steps; an absent network's step, its postprocess input and (no
    rater) PREDICTED_RATINGS dropped; `ids`: (users', items') id types."""
    config = template("ensemble")
    _id_types(config, ids)
    served = {"ranker_onnx": ranker, "rater_onnx": rater}   # the template's step -> the served model
    steps = config.ensemble_scheduling.step
    _keep(steps, lambda s: served.get(s.model_name, s.model_name) is not None)
    for step in steps:
        step.model_name = served.get(step.model_name) or step.model_name
    post = next(s for s in steps if s.model_name == "postprocess")
    for tensor, on in ((contract.RANKER_SCORES, ranker), (contract.RATER_PREDICTIONS, rater)):
        if not on:
            del post.input_map[tensor]
    if not rater:
        del post.output_map[contract.PREDICTED_RATINGS]
    _served_outputs(config, rater is not None)
    return config


def fused_config(tuning: Tuning | None = None, rater: bool = True,
                 ids: tuple[str, str] = INT_IDS) -> model_config_pb2.ModelConfig:
    """The whole pipeline as one Python model, with the ensemble's inputs and outputs."""
    t = tuning or Tuning()
    config = template("fused")
    _id_types(config, ids)
    _served_outputs(config, rater)
    _schedule(config, t.step_queue_delay_us, t.step_instances)
    _ort_parameters(config, t)
    return config


def similar_config(tuning: Tuning | None = None, ids: tuple[str, str] = INT_IDS) -> model_config_pb2.ModelConfig:
    """`similar` (seed items -> similar items, serving/similar.py): the items' id type, the steps'
    batching and instances, ONNX Runtime's parameters (its ranker runs inside the model)."""
    t = tuning or Tuning()
    config = template("similar")
    _id_types(config, ids)
    _schedule(config, t.step_queue_delay_us, t.step_instances)
    _ort_parameters(config, t)
    return config


def _write_config(folder: Path, config: model_config_pb2.ModelConfig, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_text(config, kind))


# -- version folders ---------------------------------------------------------------------------
def _versions(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]


def _next_version(folder: Path) -> int:
    """One above the newest version a build filled. A version folder holding nothing but
    model.py is the committed template's (model_repository/<step>/1/): the first build fills it."""
    filled = [v for v in _versions(folder) if any(f.name != "model.py" for f in (folder / str(v)).iterdir())]
    return max(filled, default=0) + 1


def _python_model(vdir: Path, kind: str) -> None:
    """The packaged model.py of `kind` (builder.templates) and the serving package it imports,
    into `vdir`."""
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(templates.python_model(kind), vdir / "model.py")
    shutil.rmtree(vdir / "serving", ignore_errors=True)
    shutil.copytree(SERVING, vdir / "serving", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _write_steps(tmp: Path, dataset, ranker: str | None, rater: str | None, tuning: Tuning | None = None,
                 threshold: float | None = None, cold_start: str = contract.COLD_START_POPULARITY,
                 similar: bool = True) -> dict:
    """Versioned preprocess/postprocess with their assets, `recommend`, and `similar` (with
    `similar`: it needs ONNX Runtime inside the Python stub, which NVIDIA's GPU image does not
    have, so GPU repositories go without it). `threshold`: the
    ranker's implicit threshold, for the popularity fallback (serving/fallback.py); `cold_start`
    (contract.COLD_STARTS): what a user with nothing to rank from gets, serving/requests.py."""
    written = {}
    titles = np.array(dataset.titles, dtype=str)
    # "ranker"/"rater": which network outputs postprocess (and the fused model) receive;
    # "implicit_threshold": below it a rating is no positive for the ranker (None: no ranker);
    # "cold_start": "popularity" or "refuse" (an unknown user, a user without ratings).
    assets = json.dumps({"scale": list(dataset.scale), "n_items": dataset.n_items,
                         "dataset": dataset.summary(), "ranker": ranker, "rater": rater,
                         "implicit_threshold": threshold if ranker else None, "cold_start": cold_start})
    hist = dataset.train.tocsr()
    for step, files in (("preprocess", {"item_ids.npy": dataset.item_ids, "user_ids.npy": dataset.user_ids,
                                         "hist_indptr.npy": hist.indptr.astype(np.int64),
                                         "hist_indices.npy": hist.indices.astype(np.int64),
                                         "hist_data.npy": hist.data.astype(np.float32)}),
                        ("postprocess", {"item_ids.npy": dataset.item_ids, "titles.npy": titles,
                                         # the fallback's order: evaluation's popularity baseline
                                         POPULARITY_FILE: item_counts(dataset.train)})):
        folder = tmp / step
        vdir = folder / str(_next_version(folder))
        _python_model(vdir, step)
        for name, arr in files.items():
            np.save(vdir / name, arr, allow_pickle=False)  # plain arrays only: safe to load
        (vdir / "assets.json").write_text(assets)
        written[step] = int(vdir.name)
    ids = (contract.id_type(np.asarray(dataset.user_ids)), contract.id_type(np.asarray(dataset.item_ids)))
    _write_config(tmp / "preprocess", preprocess_config(dataset.n_items, tuning, ids), "preprocess")
    _write_config(tmp / "postprocess", postprocess_config(dataset.n_items, tuning, ranker is not None,
                                                          rater is not None, ids), "postprocess")
    written["recommend"] = write_recommend(tmp, ranker, rater, tuning)
    # similar runs the ranker's ONNX network in its stub: not where it is served as a TensorRT plan.
    if similar and ranker is not None and (_latest(tmp / ranker) / "model.onnx").is_file():
        written[contract.SIMILAR] = write_similar(tmp, ranker, tuning)
    return written


def _latest(folder: Path) -> Path:
    return folder / str(max(_versions(folder)))


def write_recommend(repo: Path, ranker: str | None, rater: str | None, tuning: Tuning | None = None) -> int:
    """The `recommend` model clients call, as the tuning's pipeline says; returns its version.
    `ranker`/`rater`: the served networks' names (at least one). Fused: a new version folder
    holding the fused model.py, the serving package, the steps' assets and the networks' ONNX
    files (ranker.onnx, rater.onnx), copied from their newest versions, so both pipelines serve
    exactly the same models. The id tensors' types are those of the newest preprocess version's ids."""
    t, folder = tuning or Tuning(), Path(repo) / "recommend"
    ids = served_id_types(repo)
    # A new version each build, as for the steps; an ensemble's is an empty folder (Triton wants
    # one), reused while it is the newest, so ensemble builds do not pile up empty folders.
    newest = max(_versions(folder), default=0)
    reuse = t.pipeline == "ensemble" and newest > 0 and not any((folder / str(newest)).iterdir())
    version = newest if reuse else newest + 1
    vdir = folder / str(version)
    if t.pipeline == "ensemble":
        vdir.mkdir(parents=True, exist_ok=True)
        _write_config(folder, ensemble_config(ranker, rater, ids), "ensemble")
        return version
    for step in ("preprocess", "postprocess"):
        vdir.mkdir(parents=True, exist_ok=True)
        for f in _latest(Path(repo) / step).iterdir():
            if f.is_file() and f.name != "model.py":
                shutil.copy2(f, vdir / f.name)
    _python_model(vdir, "fused")
    for role, network in (("ranker", ranker), ("rater", rater)):
        if network:
            shutil.copy2(_latest(Path(repo) / network) / "model.onnx", vdir / f"{role}.onnx")
    _write_config(folder, fused_config(t, rater is not None, ids), "fused")
    return version


def write_similar(repo: Path, ranker: str, tuning: Tuning | None = None) -> int:
    """`similar` beside a top-N `ranker` (its served name): a new version folder holding the
    Python model, the serving package, the steps' assets and the ranker's newest ONNX network
    (ranker.onnx), as the fused `recommend` holds them; returns its version."""
    folder = Path(repo) / contract.SIMILAR
    vdir = folder / str(_next_version(folder))
    vdir.mkdir(parents=True, exist_ok=True)
    for step in ("preprocess", "postprocess"):
        for f in _latest(Path(repo) / step).iterdir():
            if f.is_file() and f.name != "model.py":
                shutil.copy2(f, vdir / f.name)
    _python_model(vdir, "similar")
    shutil.copy2(_latest(Path(repo) / ranker) / "model.onnx", vdir / "ranker.onnx")
    _write_config(folder, similar_config(tuning, served_id_types(repo)), "similar")
    return int(vdir.name)


def check_configs(repo: Path) -> None:
    """Parse every model's config.pbtxt back and check what Triton would refuse at load time: a
    name other than its folder's, an ensemble step naming a model the repository lacks. Raises
    RepositoryError naming the file."""
    repo = Path(repo)
    models = {p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()}
    for name in sorted(models):
        path = repo / name / "config.pbtxt"
        try:
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as e:
            raise RepositoryError(f"{path}: does not parse as a model config ({e})") from e
        if config.name != name:
            raise RepositoryError(f"{path}: names model {config.name!r}, but its folder is {name!r}")
        missing = [s.model_name for s in config.ensemble_scheduling.step if s.model_name not in models]
        if missing:
            raise RepositoryError(f"{path}: ensemble steps {missing} have no model in {repo}")


def _validate_network(path: Path, n_items: int) -> None:
    g = onnx.load(str(path)).graph
    names = ([i.name for i in g.input], [o.name for o in g.output])
    if names != ([INPUT], [OUTPUT]):
        raise RepositoryError(f"{path}: tensors {names}, expected ([{INPUT}], [{OUTPUT}])")
    dim = g.input[0].type.tensor_type.shape.dim[1].dim_value
    if dim != n_items:
        raise RepositoryError(f"{path}: input width {dim}, expected {n_items}")


@dataclass
class _Served:
    """One run's part in a repository: its role, the variants it adds, what its files say."""
    role: str                  # "ranker" | "rater"
    run: Path
    variants: tuple
    config: object             # builder.config.TrainConfig
    n_items: int               # the exported network's input width
    dataset: dict              # the summary saved beside its weights

    def gpu_serving(self, variant: str) -> tuple[str, Path, dict]:
        """(model name, file to serve, serving dict for network_config_message) for `variant` on a
        GPU: the TensorRT plan (`<role>_plan...`) when full TensorRT built one for this export,
        else the ONNX graph under ONNX Runtime with the TensorRT accelerator."""
        export = self.run / "export"
        if plan_meta(export / PLANS[variant]) is not None:
            return (f"{self.role}_{variant.replace('onnx', 'plan')}", export / PLANS[variant],
                    {"device": "gpu", "platform": "tensorrt_plan", "precision": GPU_PRECISION[variant]})
        return (f"{self.role}_{variant}", export / GPU_ONNX[variant],
                {"device": "gpu", "platform": "onnxruntime_onnx", "precision": GPU_PRECISION[variant]})


def _read_run(run_dir: Path, role: str | None, variants, device: str = "cpu") -> _Served:
    """A run's config and export, checked before anything is written. role None: from the model."""
    run_dir = Path(run_dir)
    cfg_path, export_cfg = run_dir / "config.json", run_dir / "export" / "export_config.json"
    if not cfg_path.is_file():
        raise RepositoryError(f"{cfg_path} not found: is {run_dir} a run folder made by `aerec train`?")
    if not export_cfg.is_file():
        raise RepositoryError(f"{run_dir / 'export'}: no export found; run `aerec export {run_dir}` first")
    config = TrainConfig.load(cfg_path)
    is_ranker = config.model in TOP_N
    if role == "ranker" and not is_ranker:
        raise RepositoryError(f"{run_dir} is a rating model ({config.model}); a rating model goes beside a "
                              f"top-N model ({', '.join(sorted(TOP_N))}), not as the ranker")
    if role == "rater" and is_ranker:
        raise RepositoryError(f"{run_dir} is a top-N model ({config.model}), not a rating model: its scores "
                              f"are no ratings")
    for variant in variants:
        src = run_dir / "export" / (GPU_ONNX if device == "gpu" else VARIANTS)[variant]
        if not src.is_file():
            exported = [v for v, name in VARIANTS.items() if (run_dir / "export" / name).is_file()]
            raise RepositoryError(f"{src} missing: export it first (aerec export {run_dir} --precision "
                                  f"{VARIANTS[variant].removeprefix('model_').removesuffix('.onnx')}); this run has "
                                  f"{', '.join(exported) or 'no export'}")
    return _Served(role or ("ranker" if is_ranker else "rater"), run_dir, tuple(variants), config,
                   json.loads(export_cfg.read_text())["n_inputs"],
                   json.loads(cfg_path.read_text()).get("dataset", {}))


def _same_items(ranker: _Served, rater: _Served) -> None:
    """Both networks must score the same columns: one dense vector feeds both."""
    if ranker.n_items != rater.n_items:
        raise RepositoryError(f"{ranker.run} scores {ranker.n_items} items but {rater.run} {rater.n_items}: "
                              "train both on the same ratings")
    a, b = ranker.dataset.get("fingerprint"), rater.dataset.get("fingerprint")
    if a != b:
        raise RepositoryError(f"{ranker.run} was trained on ratings {a} ({ranker.dataset.get('name')}) but "
                              f"{rater.run} on {b} ({rater.dataset.get('name')}): train both on the same ratings")


def _run_dataset(part: _Served):
    """The data set the run was trained on: its item ids, titles and histories are what is served."""
    try:
        return load_run_dataset(part.run)
    except RunDataError as e:
        raise RepositoryError(str(e)) from None


def _warn_below_popularity(ranking: _Served) -> None:
    """Log a warning where the run that orders `recommend`'s lists ranked its test users worse
    than the most-popular list did (its metrics.json): served, its lists would be too."""
    metrics_file = ranking.run / "metrics.json"
    below = below_popularity(json.loads(metrics_file.read_text())) if metrics_file.is_file() else None
    if below is None:
        return
    way = ("rank with a top-N model and let this one predict the ratings shown: "
           f"aerec repository TOP_N_RUN --rating-model {ranking.run}" if ranking.role == "rater"
           else "its lists are worse than the popularity fallback's; train another model or preset")
    log.warning("%s ranks below the most popular items on its test users (recall@10 %.4f against popularity's "
                "%.4f), and it orders recommend's lists here: %s", ranking.run, *below, way)


def write_repository(run_dir: Path, out: Path, variants=("onnx",), tuning: Tuning | None = None,
                     rating_run: Path | None = None, device: str = "cpu",
                     cold_start: str = contract.COLD_START_POPULARITY, keep_previous: bool = False) -> dict:
    """Add one version of each served network to the repository at `out`; returns the manifest.

    `run_dir`: a top-N run (served as the ranker, `ranker_<variant>`) or a rating run (the rater,
    `rater_<variant>`). `rating_run`: a rating run served beside a top-N `run_dir` as the rater;
    then `variants` are the rater's (fp32, int8 ...) and the ranker is served as `ranker_onnx`
    (fp32: the list it ranks is the one offline evaluation measured). The first variant is the
    one `recommend` uses. Raises RepositoryError, leaving `out` as it was, when an export is
    missing, a run has the wrong role, the two runs' item sets differ, or a run's data set is
    incomplete (a run folder from before runs held their data: its data path now holds other
    ratings than it was trained on). The data served comes from the run folder (load_run_dataset).

    `device` "gpu": the networks run on KIND_GPU instances, as Triton `tensorrt_plan` models where
    full TensorRT built plans into the export folder (named `<role>_plan`, `<role>_plan_int8` ...),
    else as ONNX Runtime models with the TensorRT execution accelerator (see
    network_config_message); the Python steps stay KIND_CPU and need only numpy. The fused
    pipeline (ONNX Runtime inside a Python model) is CPU-only: RepositoryError on a GPU.

    `cold_start` (contract.COLD_STARTS): a user `recommend` cannot rank (an unknown USER_ID, a
    user with no training ratings, neither sending a known item) gets the popularity list, SOURCE
    "popularity" ("popularity"), or a 400 ("refuse"). RepositoryError for another value.

    `keep_previous`: the pipeline `out` served before this build stays loaded beside the new one,
    as `recommend_previous` (builder/previous.py); RepositoryError where `out` served none.
    """
    run_dir, out = Path(run_dir), Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise RepositoryError(f"unknown variant(s) {unknown}; the variants are {', '.join(VARIANTS)}, each from "
                              "its `aerec export --precision` (fp32, fp16, int8)")
    if cold_start not in contract.COLD_STARTS:
        raise RepositoryError(f"cold_start must be one of {contract.COLD_STARTS}, got {cold_start!r}")
    if device not in DEVICES:
        raise RepositoryError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "gpu" and (tuning or Tuning()).pipeline == "fused":
        raise RepositoryError("the fused pipeline runs its networks with ONNX Runtime inside a Python model on "
                              "the CPU; serve a GPU repository with the ensemble pipeline")
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"{out} is a file, not a repository folder: give --out a folder")
    if rating_run is None:
        parts = [_read_run(run_dir, None, variants, device)]
    else:
        parts = [_read_run(run_dir, "ranker", ("onnx",), device), _read_run(rating_run, "rater", variants, device)]
    roles = {p.role: p for p in parts}
    # Item-based models read one item's column, not a user's row: they cannot fold in a user.
    # (Checked before the item counts: an item-based network's width is the number of users.)
    folding = [p for p in parts if p.config.model not in ITEM_BASED]
    if len(folding) < len(parts) and len(parts) > 1:
        raise RepositoryError(f"{rating_run} is item-based ({roles['rater'].config.model}): it cannot rate a "
                              "user's row beside a ranker; use a user-based rating model")
    if not folding and (out / "recommend" / "config.pbtxt").is_file():
        raise RepositoryError(f"{run_dir} is item-based ({parts[0].config.model}): its network alone cannot "
                              f"replace one of {out}'s recommend pipeline (it rates an item's column, not a "
                              "user's row); build it into another --out")
    if len(parts) > 1:
        _same_items(*parts)
    dataset = None
    if folding:
        first = parts[0].config
        dataset = _run_dataset(parts[0])
        if len(parts) > 1:
            other = roles["rater"].config
            items = _run_dataset(roles["rater"]).item_ids
            if not np.array_equal(items, dataset.item_ids):
                raise RepositoryError(f"{run_dir} and {rating_run} index different item ids "
                                      f"({first.data}/{first.split} vs {other.data}/{other.split})")
    if dataset is not None:
        _warn_below_popularity(parts[0])
    n_items = parts[0].n_items
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if out.exists():
            shutil.copytree(out, tmp, dirs_exist_ok=True)
        written, networks, serving, first = {}, {}, {}, {}
        for part in parts:
            for variant in part.variants:
                if device == "gpu":
                    name, src, srv = part.gpu_serving(variant)
                else:
                    name, src, srv = f"{part.role}_{variant}", part.run / "export" / VARIANTS[variant], None
                first.setdefault(part.role, name)
                folder = tmp / name
                version = _next_version(folder)
                (folder / str(version)).mkdir(parents=True, exist_ok=True)  # an empty one is unfilled
                dst = folder / str(version) / ("model.plan" if src.suffix == ".plan" else "model.onnx")
                shutil.copy2(src, dst)
                if dst.suffix == ".onnx":
                    _validate_network(dst, n_items)
                _write_config(folder, network_config_message(name, n_items, tuning, srv), part.role)
                written[name], networks[name] = version, n_items
                if srv:
                    serving[name] = srv
        served = {"ranker": None, "rater": None}
        if dataset is not None:  # an item-based run alone: its networks only, nothing recommends
            served.update(first)
            threshold = roles["ranker"].config.implicit_threshold if "ranker" in roles else None
            written.update(_write_steps(tmp, dataset, served["ranker"], served["rater"], tuning, threshold,
                                        cold_start, similar=device == "cpu"))
        old_path = tmp / "aerec_repository.json"
        old = json.loads(old_path.read_text()) if old_path.is_file() else {}
        manifest = {"run": str(run_dir.resolve()),
                    "rating_run": str(Path(rating_run).resolve()) if rating_run is not None else None,
                    "models": written, "n_items": n_items,
                    "networks": {**old.get("networks", {}), **networks},
                    "network_serving": {**old.get("network_serving", {}), **serving}, "device": device,
                    "standalone_networks": old.get("standalone_networks", {}),
                    **served, "tuning": (tuning or Tuning()).to_dict()}
        try:
            manifest["previous"] = previous.arrange(tmp, old, manifest, keep_previous, ensemble_config)
        except previous.PreviousError as e:
            raise RepositoryError(str(e)) from None
        (tmp / "aerec_repository.json").write_text(json.dumps(manifest, indent=2))
        sync_blocklist(tmp)   # the blocklist outlives builds: a new ranking model gets its copy
        check_configs(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            try:
                out.rename(old)
                tmp.rename(out)
            except BaseException:   # interrupted between the two renames: the old one back
                if old.exists() and not out.exists():
                    old.rename(out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def add_network(repo: Path, name: str, onnx_path: Path, n_items: int, tuning: Tuning | None = None) -> None:
    """A bare network beside the ensemble (perf's synthetic large models): model level only, so
    `apply_tuning` (which tunes the recommending pipeline) leaves its config alone."""
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx_path, folder / "1" / "model.onnx")
    _validate_network(folder / "1" / "model.onnx", n_items)
    (folder / "config.pbtxt").write_text(network_config(name, n_items, tuning))
    manifest_path = Path(repo) / "aerec_repository.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("standalone_networks", {})[name] = n_items
    manifest_path.write_text(json.dumps(manifest, indent=2))


def apply_tuning(repo: Path, tuning: Tuning) -> None:
    """Rewrite every config.pbtxt of a built repository with these knobs (weights untouched)."""
    repo = Path(repo)
    manifest = json.loads((repo / "aerec_repository.json").read_text())
    if manifest.get("device") == "gpu" and tuning.pipeline == "fused":
        raise RepositoryError(f"{repo} serves its networks on a GPU: the fused pipeline (CPU only) does not apply")
    for name, n_items in manifest.get("networks", {}).items():
        _write_config(repo / name, network_config_message(name, n_items, tuning,
                                                          manifest.get("network_serving", {}).get(name)),
                      "rater" if name.startswith("rater") else "ranker")
    ranker, rater = manifest.get("ranker"), manifest.get("rater")
    if ranker or rater:
        ids = served_id_types(repo)
        _write_config(repo / "preprocess", preprocess_config(manifest["n_items"], tuning, ids), "preprocess")
        _write_config(repo / "postprocess", postprocess_config(manifest["n_items"], tuning, ranker is not None,
                                                               rater is not None, ids), "postprocess")
        manifest.setdefault("models", {})["recommend"] = write_recommend(repo, ranker, rater, tuning)
        if (repo / contract.SIMILAR / "config.pbtxt").is_file():
            _write_config(repo / contract.SIMILAR, similar_config(tuning, ids), "similar")
    if manifest.get("previous"):   # both versions stay loaded (builder/previous.py)
        previous.set_policies(repo, manifest["previous"]["policies"])
    manifest["tuning"] = tuning.to_dict()
    (repo / "aerec_repository.json").write_text(json.dumps(manifest, indent=2))


def _blocklist_readers(repo: Path) -> list[Path]:
    """The folders of the repository's Python models that rank and so read a blocklist copy:
    preprocess, `recommend` where it is the fused model, `similar`."""
    readers = []
    for name in ("preprocess", contract.MODEL, contract.SIMILAR):
        path = Path(repo) / name / "config.pbtxt"
        if path.is_file() and text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()).backend == "python":
            readers.append(path.parent)
    return readers


def sync_blocklist(repo: Path) -> list[str]:
    """Copy the repository's blocklist (its root's blocklist.txt) into each ranking model's folder
    (serving/blocklist.py says why there); nothing where the repository has none and no copy.
    Returns the blocked ids."""
    ids = load_blocklist(repo)
    for folder in _blocklist_readers(repo):
        if ids or blocklist_path(folder).is_file():
            save_blocklist(folder, ids)
    return ids


def update_blocklist(repo: Path, add=(), remove=()) -> list[str]:
    """The repository's blocklist (serving/blocklist.py) with the item ids `add` added and
    `remove` removed (ids as text), written atomically, then copied into the ranking models'
    folders; returns it. A running server applies it once those models reload (`aerec reload`).
    Raises RepositoryError for a folder no build filled, or an id to add that the served
    catalogue does not hold (a typo would block nothing)."""
    repo = Path(repo)
    folder = repo / "preprocess"
    if not _versions(folder) or not (_latest(folder) / "item_ids.npy").is_file():
        raise RepositoryError(f"{repo}: no built repository here (no preprocess version); run `aerec repository` first")
    served = np.load(_latest(folder) / "item_ids.npy", allow_pickle=False)
    add, remove = [str(i).strip() for i in add], {str(i).strip() for i in remove}
    known = {str(i) for i in served.tolist()}
    unknown = [i for i in add if i not in known]
    if unknown:
        raise RepositoryError(f"item(s) {', '.join(unknown[:5])} are not in the served catalogue "
                              f"({len(served)} ids); nothing written")
    save_blocklist(repo, [i for i in load_blocklist(repo) + add if i not in remove])
    return sync_blocklist(repo)
