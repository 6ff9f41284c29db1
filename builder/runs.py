"""Run folders: what `aerec train` writes (weights.safetensors, config.json, metrics.json,
history.json, curve.png) and reads back, so every later stage starts from a folder."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from builder.checkpoint import FILENAME as CHECKPOINT
from builder.config import TrainConfig
from builder.data.dataset import Dataset
from builder.data.sources import load_dataset
from builder.plots import plot_curve
from builder.evaluate import evaluate_model
from builder.predict import orient
from builder.train import TrainResult, make_model, train


def code_version() -> str:
    """The checkout's short git commit, or "unknown" outside a git checkout (or without git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_run(result: TrainResult, dataset: Dataset, out: Path) -> Path:
    """Write a trained model to the run folder `out` (created if missing) and return it.

    Files: weights.safetensors (the state dict, no pickle), config.json (the TrainConfig plus the
    data set's summary and fingerprint, the code version, n_inputs and n_rows: the width of an
    input vector and how many vectors the model was trained on, in its orientation), metrics.json,
    history.json (one row per epoch) and curve.png."""
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


def train_run(changes: dict, out: Path, progress: bool = True, resume: bool = False,
              checkpoint_every_s: float = 30.0) -> TrainResult:
    """`aerec train`: the default TrainConfig updated with `changes`, trained on its data and
    split, saved to the run folder `out`; returns the result (its `metrics` as in metrics.json).

    Training is checkpointed to out/checkpoint.pt; with `resume` an interrupted run continues
    from it (and ends with the same weights and metrics), and the checkpoint is removed once the
    run is saved. Raises ValueError for an unknown option or value, a checkpoint found without
    `resume` or one written by another config; FileNotFoundError for missing data."""
    out = Path(out)
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file() and not resume:
        raise ValueError(f"{checkpoint} exists: an interrupted run. Add --resume to continue it, "
                         "or remove it to start over")
    config = TrainConfig().updated(**changes)
    dataset = load_dataset(config.data, config.split, config.seed)
    result = train(config, dataset, progress=progress, checkpoint_dir=out, checkpoint_every_s=checkpoint_every_s)
    save_run(result, dataset, out)
    checkpoint.unlink(missing_ok=True)  # the run is whole: weights.safetensors replaces it
    return result


def evaluate_run(run_dir: Path) -> dict:
    """`aerec evaluate`: a run folder's test metrics recomputed from its saved weights and config
    (a blend's from its members', see builder.blend.evaluate_blend). Raises FileNotFoundError /
    ValueError as load_run and load_dataset do."""
    run_dir = Path(run_dir)
    if (run_dir / "blend.json").is_file():
        from builder.blend import evaluate_blend  # blend builds on this module
        return evaluate_blend(run_dir)
    config, model = load_run(run_dir)
    dataset = load_dataset(config.data, config.split, config.seed)
    return evaluate_model(model, dataset, config, "cpu")
