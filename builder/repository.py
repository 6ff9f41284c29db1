"""Render a Triton model repository from an exported run: the one place that knows Triton's layout.

Each build adds a numbered version beside the ones already served; the whole repository is
built in a temporary folder, validated, then swapped in, so a failure leaves the old one intact.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx

from builder.export import INPUT, OUTPUT
from builder.models import ITEM_BASED
from server.backends.onnxruntime.session_options import SPINNING, THREADS  # the keys it reads back

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "server" / "steps"
ORT_BACKEND = ROOT / "server" / "backends" / "onnxruntime"   # session_options.py: the reader of these keys
MAX_BATCH = 64

VARIANTS = {"onnx": "model_fp32.onnx", "onnx_int8": "model_int8.onnx"}
PIPELINES = ("ensemble", "fused")


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
        raw = raw.get("tuning", raw)
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise RepositoryError(f"{path}: unknown tuning key(s) {sorted(unknown)}")
        return cls(**raw)

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise RepositoryError(f"pipeline must be one of {PIPELINES}, got {self.pipeline!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _batching(delay_us: int, preferred=()) -> str:
    pref = f" preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else ""
    return f"dynamic_batching {{{pref} max_queue_delay_microseconds: {delay_us} }}"


def network_config(name: str, n_items: int, max_batch: int = 256, tuning: Tuning | None = None) -> str:
    """config.pbtxt for an autoencoder: platform onnxruntime_onnx runs unchanged on NVIDIA's
    container (native backend) and on the embedded server (our Python-based backend); both read
    the thread count from the native backend's own parameter name."""
    t = tuning or Tuning()
    return f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {n_items} ] }} ]
output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {n_items} ] }} ]
{_batching(t.network_queue_delay_us, t.preferred_batch_sizes)}
instance_group [ {{ count: {t.network_instances} kind: KIND_CPU }} ]
{_threads(t)}'''


def _threads(t: Tuning) -> str:
    return ((f'parameters {{ key: "{THREADS}" value: {{ string_value: "{t.ort_threads}" }} }}\n'
             if t.ort_threads else "")
            + (f'parameters {{ key: "{SPINNING}" value: {{ string_value: "0" }} }}\n' if not t.ort_spinning else ""))


def _python_step_config(name: str, inputs: list[str], outputs: list[str], tuning: Tuning | None) -> str:
    """config.pbtxt of a Python-backend step; `inputs`/`outputs` are the tensor lines' bodies."""
    t = tuning or Tuning()
    tensors = lambda lines: ",\n".join(f"  {{ {line} }}" for line in lines)  # noqa: E731
    return f'''name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [
{tensors(inputs)}
]
output [
{tensors(outputs)}
]
{_batching(t.step_queue_delay_us)}
instance_group [ {{ count: {t.step_instances} kind: KIND_CPU }} ]
'''


REQUEST_INPUTS = [
    'name: "USER_ID" data_type: TYPE_INT64 dims: [ 1 ] optional: true',
    'name: "ITEM_IDS" data_type: TYPE_INT64 dims: [ -1 ] optional: true allow_ragged_batch: true',
    'name: "RATINGS" data_type: TYPE_FP32 dims: [ -1 ] optional: true allow_ragged_batch: true',
    'name: "TOP_K" data_type: TYPE_INT32 dims: [ 1 ] optional: true',
]
RESPONSE_OUTPUTS = [
    'name: "RECOMMENDED_IDS" data_type: TYPE_INT64 dims: [ -1 ]',
    'name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ]',
    'name: "TITLES" data_type: TYPE_STRING dims: [ -1 ]',
    'name: "UNKNOWN_ITEMS" data_type: TYPE_INT32 dims: [ 1 ]',
]


def fused_config(tuning: Tuning | None = None) -> str:
    """The whole pipeline as one Python model, with the ensemble's inputs and outputs."""
    return _python_step_config("recommend", REQUEST_INPUTS, RESPONSE_OUTPUTS, tuning) + _threads(tuning or Tuning())


def preprocess_config(n_items: int, tuning: Tuning | None = None) -> str:
    return _python_step_config("preprocess", REQUEST_INPUTS, [
        f'name: "DENSE" data_type: TYPE_FP32 dims: [ {n_items} ]',
        'name: "TOP_K_OUT" data_type: TYPE_INT32 dims: [ 1 ]',
        'name: "UNKNOWN_ITEMS" data_type: TYPE_INT32 dims: [ 1 ]',
    ], tuning)


def postprocess_config(n_items: int, tuning: Tuning | None = None) -> str:
    return _python_step_config("postprocess", [
        f'name: "PREDICTIONS" data_type: TYPE_FP32 dims: [ {n_items} ]',
        f'name: "DENSE" data_type: TYPE_FP32 dims: [ {n_items} ]',
        'name: "TOP_K" data_type: TYPE_INT32 dims: [ 1 ] optional: true',
    ], RESPONSE_OUTPUTS[:3], tuning)


def ensemble_config(network: str) -> str:
    """preprocess -> network -> postprocess. The output is RECOMMENDED_IDS, not ITEM_IDS:
    an ensemble tensor cannot be both an input and an output."""
    def maps(kind, pairs):
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs)
    pre_in = maps("input_map", [(n, n) for n in ("USER_ID", "ITEM_IDS", "RATINGS", "TOP_K")])
    return f'''name: "recommend"
platform: "ensemble"
max_batch_size: {MAX_BATCH}
input [
  {{ name: "USER_ID" data_type: TYPE_INT64 dims: [ 1 ] optional: true }},
  {{ name: "ITEM_IDS" data_type: TYPE_INT64 dims: [ -1 ] optional: true }},
  {{ name: "RATINGS" data_type: TYPE_FP32 dims: [ -1 ] optional: true }},
  {{ name: "TOP_K" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "RECOMMENDED_IDS" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "TITLES" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "UNKNOWN_ITEMS" data_type: TYPE_INT32 dims: [ 1 ] }}
]
ensemble_scheduling {{
  step [
    {{ model_name: "preprocess" model_version: -1 {pre_in}
      {maps("output_map", [("DENSE", "dense"), ("TOP_K_OUT", "top_k"), ("UNKNOWN_ITEMS", "UNKNOWN_ITEMS")])} }},
    {{ model_name: "{network}" model_version: -1 {maps("input_map", [(INPUT, "dense")])}
      {maps("output_map", [(OUTPUT, "predictions")])} }},
    {{ model_name: "postprocess" model_version: -1
      {maps("input_map", [("PREDICTIONS", "predictions"), ("DENSE", "dense"), ("TOP_K", "top_k")])}
      {maps("output_map", [(n, n) for n in ("RECOMMENDED_IDS", "SCORES", "TITLES")])} }}
  ]
}}
'''


def _write_steps(tmp: Path, dataset, network: str, tuning: Tuning | None = None) -> dict:
    """Versioned preprocess/postprocess with their assets, and the `recommend` ensemble."""
    written = {}
    titles = np.array(dataset.titles, dtype=str)
    assets = json.dumps({"scale": list(dataset.scale), "n_items": dataset.n_items,
                         "dataset": dataset.summary()})
    hist = dataset.train.tocsr()
    for step, files in (("preprocess", {"item_ids.npy": dataset.item_ids, "user_ids.npy": dataset.user_ids,
                                         "hist_indptr.npy": hist.indptr.astype(np.int64),
                                         "hist_indices.npy": hist.indices.astype(np.int64),
                                         "hist_data.npy": hist.data.astype(np.float32)}),
                        ("postprocess", {"item_ids.npy": dataset.item_ids, "titles.npy": titles})):
        folder = tmp / step
        versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
        vdir = folder / str(max(versions, default=0) + 1)
        vdir.mkdir(parents=True)
        shutil.copy2(STEPS / f"{step}.py", vdir / "model.py")
        for name, arr in files.items():
            np.save(vdir / name, arr, allow_pickle=False)  # plain arrays only: safe to load
        (vdir / "assets.json").write_text(assets)
        written[step] = int(vdir.name)
    shutil.copy2(ROOT / "builder" / "ranking.py", tmp / "postprocess" / str(written["postprocess"]) / "ranking.py")
    (tmp / "preprocess" / "config.pbtxt").write_text(preprocess_config(dataset.n_items, tuning))
    (tmp / "postprocess" / "config.pbtxt").write_text(postprocess_config(dataset.n_items, tuning))
    written["recommend"] = write_recommend(tmp, network, tuning)
    return written


def _latest(folder: Path) -> Path:
    return folder / str(max(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()))


def write_recommend(repo: Path, network: str, tuning: Tuning | None = None) -> int:
    """The `recommend` model clients call, as the tuning's pipeline says; returns its version.
    Fused: a new version folder holding the steps' code and assets and the network's ONNX file,
    copied from their newest versions, so both pipelines serve exactly the same model."""
    t, folder = tuning or Tuning(), Path(repo) / "recommend"
    versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    if t.pipeline == "ensemble":
        version = max(versions, default=1)
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(ensemble_config(network))
        return version
    version = max(versions, default=0) + 1
    vdir = folder / str(version)
    vdir.mkdir(parents=True)
    for step in ("preprocess", "postprocess"):
        for f in _latest(Path(repo) / step).iterdir():
            if f.is_file() and f.name != "model.py":
                shutil.copy2(f, vdir / f.name)
        shutil.copy2(STEPS / f"{step}.py", vdir / f"{step}.py")
    shutil.copy2(STEPS / "fused.py", vdir / "model.py")
    shutil.copy2(STEPS / "ranking_graph.py", vdir / "ranking_graph.py")
    shutil.copy2(ORT_BACKEND / "session_options.py", vdir / "session_options.py")
    shutil.copy2(_latest(Path(repo) / network) / "model.onnx", vdir / "model.onnx")
    (folder / "config.pbtxt").write_text(fused_config(t))
    return version


def _validate_network(path: Path, n_items: int) -> None:
    g = onnx.load(str(path)).graph
    names = ([i.name for i in g.input], [o.name for o in g.output])
    if names != ([INPUT], [OUTPUT]):
        raise RepositoryError(f"{path}: tensors {names}, expected ([{INPUT}], [{OUTPUT}])")
    dim = g.input[0].type.tensor_type.shape.dim[1].dim_value
    if dim != n_items:
        raise RepositoryError(f"{path}: input width {dim}, expected {n_items}")


def write_repository(run_dir: Path, out: Path, variants=("onnx",), tuning: Tuning | None = None) -> dict:
    """Add one version of each variant's network to the repository at `out`."""
    run_dir, out = Path(run_dir), Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise RepositoryError(f"unknown variant(s) {unknown}; available here: {', '.join(VARIANTS)}")
    export = run_dir / "export"
    cfg_path = export / "export_config.json"
    if not cfg_path.is_file():
        raise RepositoryError(f"{export}: no export found; run `aerec export {run_dir}` first")
    n_items = json.loads(cfg_path.read_text())["n_inputs"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if out.exists():
            shutil.copytree(out, tmp, dirs_exist_ok=True)
        written = {}
        for variant in variants:
            src = export / VARIANTS[variant]
            if not src.is_file():
                raise RepositoryError(f"{src} missing: export with the matching --precision first")
            name = f"autoencoder_{variant}"
            folder = tmp / name
            versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
            version = max(versions, default=0) + 1
            (folder / str(version)).mkdir(parents=True)
            shutil.copy2(src, folder / str(version) / "model.onnx")
            _validate_network(folder / str(version) / "model.onnx", n_items)
            (folder / "config.pbtxt").write_text(network_config(name, n_items, tuning=tuning))
            written[name] = version
        from builder.config import TrainConfig
        from builder.data.sources import load_dataset
        train_cfg = TrainConfig.load(run_dir / "config.json")
        if train_cfg.model not in ITEM_BASED:  # item-based models cannot fold in a user
            dataset = load_dataset(train_cfg.data, train_cfg.split, train_cfg.seed)
            written.update(_write_steps(tmp, dataset, f"autoencoder_{variants[0]}", tuning))
        networks = {f"autoencoder_{v}": n_items for v in variants}
        old_path = tmp / "aerec_repository.json"
        old = json.loads(old_path.read_text()) if old_path.is_file() else {}
        manifest = {"run": str(run_dir.resolve()), "models": written, "n_items": n_items,
                    "networks": {**old.get("networks", {}), **networks},
                    "standalone_networks": old.get("standalone_networks", {}),
                    "served_network": f"autoencoder_{variants[0]}", "tuning": (tuning or Tuning()).to_dict()}
        (tmp / "aerec_repository.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
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
    (folder / "config.pbtxt").write_text(network_config(name, n_items, tuning=tuning))
    manifest_path = Path(repo) / "aerec_repository.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("standalone_networks", {})[name] = n_items
    manifest_path.write_text(json.dumps(manifest, indent=2))


def apply_tuning(repo: Path, tuning: Tuning) -> None:
    """Rewrite every config.pbtxt of a built repository with these knobs (weights untouched)."""
    repo = Path(repo)
    manifest = json.loads((repo / "aerec_repository.json").read_text())
    for name, n_items in manifest.get("networks", {}).items():
        (repo / name / "config.pbtxt").write_text(network_config(name, n_items, tuning=tuning))
    if (repo / "preprocess").is_dir():
        (repo / "preprocess" / "config.pbtxt").write_text(preprocess_config(manifest["n_items"], tuning))
        (repo / "postprocess" / "config.pbtxt").write_text(postprocess_config(manifest["n_items"], tuning))
        manifest.setdefault("models", {})["recommend"] = write_recommend(
            repo, manifest.get("served_network", "autoencoder_onnx"), tuning)
    manifest["tuning"] = tuning.to_dict()
    (repo / "aerec_repository.json").write_text(json.dumps(manifest, indent=2))
