"""Render a Triton model repository from exported runs: the one place that knows Triton's layout.

A repository serves a ranker (a top-N model: its scores order the list), a rater (a rating
model: its predictions are the ratings shown), or both side by side on the same input vector.
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
from builder.models import ITEM_BASED, TOP_N
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
    """config.pbtxt for a network (ranker or rater): platform onnxruntime_onnx runs unchanged on NVIDIA's
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
# What postprocess answers; UNKNOWN_ITEMS comes from preprocess. PREDICTED_RATINGS only where
# a rater is served: a ranker alone has no ratings to show. Every row is TOP_K long; a row
# with fewer unrated items than TOP_K (a rated item is never recommended) has N_RECOMMENDED
# real items, then padding: RECOMMENDED_IDS -1, SCORES and PREDICTED_RATINGS NaN, TITLES "".
RANKED_OUTPUTS = [
    'name: "RECOMMENDED_IDS" data_type: TYPE_INT64 dims: [ -1 ]',
    'name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ]',
    'name: "TITLES" data_type: TYPE_STRING dims: [ -1 ]',
    'name: "N_RECOMMENDED" data_type: TYPE_INT32 dims: [ 1 ]',
]
RATINGS_OUTPUT = 'name: "PREDICTED_RATINGS" data_type: TYPE_FP32 dims: [ -1 ]'
UNKNOWN_OUTPUT = 'name: "UNKNOWN_ITEMS" data_type: TYPE_INT32 dims: [ 1 ]'


def _ranked_outputs(rater: bool) -> list[str]:
    return RANKED_OUTPUTS + ([RATINGS_OUTPUT] if rater else [])


def fused_config(tuning: Tuning | None = None, rater: bool = True) -> str:
    """The whole pipeline as one Python model, with the ensemble's inputs and outputs."""
    return (_python_step_config("recommend", REQUEST_INPUTS, _ranked_outputs(rater) + [UNKNOWN_OUTPUT], tuning)
            + _threads(tuning or Tuning()))


def preprocess_config(n_items: int, tuning: Tuning | None = None) -> str:
    return _python_step_config("preprocess", REQUEST_INPUTS, [
        f'name: "DENSE" data_type: TYPE_FP32 dims: [ {n_items} ]',
        'name: "TOP_K_OUT" data_type: TYPE_INT32 dims: [ 1 ]',
        'name: "UNKNOWN_ITEMS" data_type: TYPE_INT32 dims: [ 1 ]',
    ], tuning)


def postprocess_config(n_items: int, tuning: Tuning | None = None, ranker: bool = False, rater: bool = True) -> str:
    """Inputs: the served networks' outputs (RANKER_SCORES, RATER_PREDICTIONS), DENSE, TOP_K."""
    nets = [f'name: "{name}" data_type: TYPE_FP32 dims: [ {n_items} ]'
            for name, on in (("RANKER_SCORES", ranker), ("RATER_PREDICTIONS", rater)) if on]
    return _python_step_config("postprocess", nets + [
        f'name: "DENSE" data_type: TYPE_FP32 dims: [ {n_items} ]',
        'name: "TOP_K" data_type: TYPE_INT32 dims: [ 1 ] optional: true',
    ], _ranked_outputs(rater), tuning)


def ensemble_config(ranker: str | None, rater: str | None) -> str:
    """preprocess -> ranker and rater, each on the same dense vector -> postprocess. The two
    network steps depend on nothing but preprocess, so Triton runs them in parallel. The output
    is RECOMMENDED_IDS, not ITEM_IDS: an ensemble tensor cannot be both an input and an output."""
    def maps(kind, pairs):
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs)
    pre_in = maps("input_map", [(n, n) for n in ("USER_ID", "ITEM_IDS", "RATINGS", "TOP_K")])
    nets = [(network, tensor) for network, tensor in ((ranker, "RANKER_SCORES"), (rater, "RATER_PREDICTIONS"))
            if network]
    net_steps = "".join(f'''
    {{ model_name: "{network}" model_version: -1 {maps("input_map", [(INPUT, "dense")])}
      {maps("output_map", [(OUTPUT, tensor.lower())])} }},''' for network, tensor in nets)
    outputs = ",\n".join(f"  {{ {line} }}" for line in _ranked_outputs(rater is not None) + [UNKNOWN_OUTPUT])
    post_out = ["RECOMMENDED_IDS", "SCORES", "TITLES", "N_RECOMMENDED"] + (["PREDICTED_RATINGS"] if rater else [])
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
{outputs}
]
ensemble_scheduling {{
  step [
    {{ model_name: "preprocess" model_version: -1 {pre_in}
      {maps("output_map", [("DENSE", "dense"), ("TOP_K_OUT", "top_k"), ("UNKNOWN_ITEMS", "UNKNOWN_ITEMS")])}
    }},{net_steps}
    {{ model_name: "postprocess" model_version: -1
      {maps("input_map", [(t, t.lower()) for _, t in nets] + [("DENSE", "dense"), ("TOP_K", "top_k")])}
      {maps("output_map", [(n, n) for n in post_out])} }}
  ]
}}
'''


def _write_steps(tmp: Path, dataset, ranker: str | None, rater: str | None, tuning: Tuning | None = None) -> dict:
    """Versioned preprocess/postprocess with their assets, and the `recommend` ensemble."""
    written = {}
    titles = np.array(dataset.titles, dtype=str)
    # "ranker"/"rater": which network outputs postprocess (and the fused model) receive.
    assets = json.dumps({"scale": list(dataset.scale), "n_items": dataset.n_items,
                         "dataset": dataset.summary(), "ranker": ranker, "rater": rater})
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
    (tmp / "postprocess" / "config.pbtxt").write_text(
        postprocess_config(dataset.n_items, tuning, ranker is not None, rater is not None))
    written["recommend"] = write_recommend(tmp, ranker, rater, tuning)
    return written


def _latest(folder: Path) -> Path:
    return folder / str(max(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()))


def write_recommend(repo: Path, ranker: str | None, rater: str | None, tuning: Tuning | None = None) -> int:
    """The `recommend` model clients call, as the tuning's pipeline says; returns its version.
    `ranker`/`rater`: the served networks' names (at least one). Fused: a new version folder
    holding the steps' code and assets and the networks' ONNX files (ranker.onnx, rater.onnx),
    copied from their newest versions, so both pipelines serve exactly the same models."""
    t, folder = tuning or Tuning(), Path(repo) / "recommend"
    versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    if t.pipeline == "ensemble":
        version = max(versions, default=1)
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(ensemble_config(ranker, rater))
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
    for role, network in (("ranker", ranker), ("rater", rater)):
        if network:
            shutil.copy2(_latest(Path(repo) / network) / "model.onnx", vdir / f"{role}.onnx")
    (folder / "config.pbtxt").write_text(fused_config(t, rater is not None))
    return version


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

    @property
    def served(self) -> str:
        return f"{self.role}_{self.variants[0]}"


def _read_run(run_dir: Path, role: str | None, variants) -> _Served:
    """A run's config and export, checked before anything is written. role None: from the model."""
    from builder.config import TrainConfig
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
        src = run_dir / "export" / VARIANTS[variant]
        if not src.is_file():
            raise RepositoryError(f"{src} missing: export with the matching --precision first")
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


def _same_data(part: _Served, dataset) -> None:
    """The item ids, titles and histories served are rebuilt from the run's data path at build
    time: data that changed since training would serve one item's column under another's id.
    Refused when the run recorded a fingerprint and the data there now has another."""
    recorded = part.dataset.get("fingerprint")
    if recorded and recorded != dataset.fingerprint:
        raise RepositoryError(f"{part.run} was trained on ratings {recorded} but {part.config.data} now holds "
                              f"{dataset.fingerprint}: the data changed since training; restore it or retrain")


def write_repository(run_dir: Path, out: Path, variants=("onnx",), tuning: Tuning | None = None,
                     rating_run: Path | None = None) -> dict:
    """Add one version of each served network to the repository at `out`; returns the manifest.

    `run_dir`: a top-N run (served as the ranker, `ranker_<variant>`) or a rating run (the rater,
    `rater_<variant>`). `rating_run`: a rating run served beside a top-N `run_dir` as the rater;
    then `variants` are the rater's (fp32, int8 ...) and the ranker is served as `ranker_onnx`
    (fp32: the list it ranks is the one offline evaluation measured). The first variant is the
    one `recommend` uses. Raises RepositoryError, leaving `out` as it was, when an export is
    missing, a run has the wrong role, the two runs' item sets differ, or a run's data path
    now holds other ratings than it was trained on (dataset fingerprints differ).
    """
    from builder.data.sources import load_dataset
    run_dir, out = Path(run_dir), Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise RepositoryError(f"unknown variant(s) {unknown}; available here: {', '.join(VARIANTS)}")
    if rating_run is None:
        parts = [_read_run(run_dir, None, variants)]
    else:
        parts = [_read_run(run_dir, "ranker", ("onnx",)), _read_run(rating_run, "rater", variants)]
        _same_items(*parts)
    roles = {p.role: p for p in parts}
    # Item-based models read one item's column, not a user's row: they cannot fold in a user.
    folding = [p for p in parts if p.config.model not in ITEM_BASED]
    if len(folding) < len(parts) and len(parts) > 1:
        raise RepositoryError(f"{rating_run} is item-based ({roles['rater'].config.model}): it cannot rate a "
                              "user's row beside a ranker; use a user-based rating model")
    dataset = None
    if folding:
        first = parts[0].config
        dataset = load_dataset(first.data, first.split, first.seed)
        _same_data(parts[0], dataset)
        if len(parts) > 1:
            other = roles["rater"].config
            other_data = load_dataset(other.data, other.split, other.seed)
            _same_data(roles["rater"], other_data)
            items = other_data.item_ids
            if not np.array_equal(items, dataset.item_ids):
                raise RepositoryError(f"{run_dir} and {rating_run} index different item ids "
                                      f"({first.data}/{first.split} vs {other.data}/{other.split})")
    n_items = parts[0].n_items
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if out.exists():
            shutil.copytree(out, tmp, dirs_exist_ok=True)
        written, networks = {}, {}
        for part in parts:
            for variant in part.variants:
                name = f"{part.role}_{variant}"
                folder = tmp / name
                versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
                version = max(versions, default=0) + 1
                (folder / str(version)).mkdir(parents=True)
                shutil.copy2(part.run / "export" / VARIANTS[variant], folder / str(version) / "model.onnx")
                _validate_network(folder / str(version) / "model.onnx", n_items)
                (folder / "config.pbtxt").write_text(network_config(name, n_items, tuning=tuning))
                written[name], networks[name] = version, n_items
        served = {"ranker": None, "rater": None}
        if dataset is not None:  # an item-based run alone: its networks only, nothing recommends
            served.update({part.role: part.served for part in parts})
            written.update(_write_steps(tmp, dataset, served["ranker"], served["rater"], tuning))
        old_path = tmp / "aerec_repository.json"
        old = json.loads(old_path.read_text()) if old_path.is_file() else {}
        manifest = {"run": str(run_dir.resolve()),
                    "rating_run": str(Path(rating_run).resolve()) if rating_run is not None else None,
                    "models": written, "n_items": n_items,
                    "networks": {**old.get("networks", {}), **networks},
                    "standalone_networks": old.get("standalone_networks", {}),
                    **served, "tuning": (tuning or Tuning()).to_dict()}
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
    ranker, rater = manifest.get("ranker"), manifest.get("rater")
    if ranker or rater:
        (repo / "preprocess" / "config.pbtxt").write_text(preprocess_config(manifest["n_items"], tuning))
        (repo / "postprocess" / "config.pbtxt").write_text(
            postprocess_config(manifest["n_items"], tuning, ranker is not None, rater is not None))
        manifest.setdefault("models", {})["recommend"] = write_recommend(repo, ranker, rater, tuning)
    manifest["tuning"] = tuning.to_dict()
    (repo / "aerec_repository.json").write_text(json.dumps(manifest, indent=2))
