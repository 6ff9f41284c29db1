"""Run folders: what `aerec train` writes (weights.safetensors, config.json, metrics.json,
history.json, curve.png and the data set it was trained on) and reads back, so every later
stage starts from a folder, not from the ratings file. Input/output only: the stages that make
and score run folders (train, evaluate) are in builder.stages."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from builder.config import TrainConfig
from builder.data.dataset import Dataset
from builder.data.sources import load_dataset
from builder.plots import plot_curve
from builder.predict import orient
from builder.train import TrainResult, make_model


def code_version() -> str:
    """The checkout's short git commit, or "unknown" outside a git checkout (or without git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The data set a run was trained on, beside its weights (plain .npy, no pickle): later stages
# read it here rather than reload and re-split a ratings file that may have moved or changed.
DATASET_ARRAYS = ("user_ids", "item_ids", "train_indptr", "train_indices", "train_data",
                  "test_indptr", "test_indices", "test_data")
TITLES = "titles.json"


class RunDataError(ValueError):
    """A run folder's data set is incomplete, or its data path now holds other ratings."""


def id_array(ids) -> np.ndarray:
    """A Dataset's ids as saved: int64, or numpy unicode for string ids (never an object array,
    which np.load refuses without pickle). Raises ValueError for other ids."""
    ids = np.asarray(ids)
    if ids.dtype.kind == "O":  # strings held as Python objects: fixed-width unicode instead
        ids = ids.astype(str)
    if ids.dtype.kind == "U":
        return ids
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    raise ValueError(f"ids of dtype {ids.dtype}: expected integers or strings")


def save_dataset(dataset: Dataset, out: Path) -> None:
    """Write `dataset`'s id maps (int64, or numpy unicode for string ids), titles and train/test
    CSR arrays into the folder `out`; its name, scale, fingerprint, feedback and id kinds are
    recorded in config.json by save_run."""
    arrays = {"user_ids": id_array(dataset.user_ids), "item_ids": id_array(dataset.item_ids)}
    for part in ("train", "test"):
        m = getattr(dataset, part)
        arrays.update({f"{part}_indptr": m.indptr, f"{part}_indices": m.indices, f"{part}_data": m.data})
    for name, a in arrays.items():
        np.save(out / f"{name}.npy", a, allow_pickle=False)
    (out / TITLES).write_text(json.dumps([str(t) for t in dataset.titles]))


def load_run_dataset(run_dir: Path) -> Dataset:
    """The Dataset a run folder was trained on, rebuilt from the arrays save_run wrote.

    A run folder written before runs held their data (none of the arrays) reloads and re-splits
    its config's data path instead, refused (RunDataError) when that now holds other ratings than
    the recorded fingerprint. Raises RunDataError when only some of the files are there,
    FileNotFoundError when config.json is missing (and as load_dataset does for the fallback)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {run_dir} a run folder made by `aerec train`?")
    summary = json.loads(cfg_path.read_text()).get("dataset", {})
    files = [run_dir / f"{name}.npy" for name in DATASET_ARRAYS] + [run_dir / TITLES]
    missing = [p.name for p in files if not p.is_file()]
    if len(missing) == len(files):
        return _reload_dataset(run_dir, summary)
    if missing:
        raise RunDataError(f"{run_dir}: run folder lacks {', '.join(missing)} of its data set; "
                           "copy the whole folder or retrain")
    a = {name: np.load(run_dir / f"{name}.npy", allow_pickle=False) for name in DATASET_ARRAYS}
    shape = (len(a["user_ids"]), len(a["item_ids"]))
    train, test = (sp.csr_matrix((a[f"{p}_data"], a[f"{p}_indices"], a[f"{p}_indptr"]), shape=shape)
                   for p in ("train", "test"))
    titles = json.loads((run_dir / TITLES).read_text())
    return Dataset(train, test, a["user_ids"], a["item_ids"], titles, tuple(summary["scale"]),
                   summary["fingerprint"], summary.get("name", ""), summary.get("feedback", "explicit"))


def _reload_dataset(run_dir: Path, summary: dict) -> Dataset:
    config = TrainConfig.load(run_dir / "config.json")
    dataset = load_dataset(config.data, config.split, config.seed)
    recorded = summary.get("fingerprint")
    if recorded and recorded != dataset.fingerprint:
        raise RunDataError(f"{run_dir} was trained on ratings {recorded} but {config.data} now holds "
                           f"{dataset.fingerprint}: the data changed since training; restore it or retrain")
    return dataset


def save_run(result: TrainResult, dataset: Dataset, out: Path) -> Path:
    """Write a trained model to the run folder `out` (created if missing) and return it.

    Files: weights.safetensors (the state dict, no pickle), config.json (the TrainConfig plus the
    data set's summary and fingerprint, the code version, n_inputs and n_rows: the width of an
    input vector and how many vectors the model was trained on, in its orientation), metrics.json,
    history.json (one row per epoch), curve.png, and the data set (see save_dataset;
    load_run_dataset reads it back)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors"))  # no pickle: weights a user can swap are safe to load
    oriented = orient(dataset.train, result.config)
    result.config.save(out / "config.json", dataset=dataset.summary(), code_version=code_version(),
                       n_inputs=int(oriented.shape[1]), n_rows=int(oriented.shape[0]))
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    plot_curve(result.history, out / "curve.png", result.config.model)
    save_dataset(dataset, out)
    return out


def load_run(run_dir: Path, device="cpu") -> tuple[TrainConfig, torch.nn.Module]:
    """(config, model in eval mode on `device`) from a folder save_run wrote.

    Raises FileNotFoundError when config.json or weights.safetensors is missing, ValueError when
    the weights cannot be loaded into the configured model (damaged file, other architecture)."""
    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / "config.json", run_dir / "weights.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a run folder made by `aerec train`?")
    config = TrainConfig.load(cfg_path)
    saved = json.loads(cfg_path.read_text())
    model = make_model(config, saved["n_inputs"], saved.get("n_rows"))
    try:
        state = load_file(str(w_path), device=str(device))
        model.load_state_dict(state)
    except Exception as e:  # safetensors raises several types for a damaged file
        raise ValueError(f"{w_path}: cannot load weights ({e})") from None
    return config, model.to(device).eval()
