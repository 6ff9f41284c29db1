"""The stages that make and score run folders: `aerec train` (train_run) and `aerec evaluate`
(evaluate_run). Reading and writing the folders is builder.run_folder's; a blend's training and
scoring is builder.blend's, which this module dispatches to."""
from __future__ import annotations

from pathlib import Path

from builder import distributed
from builder.blend import evaluate_blend
from builder.checkpoint import FILENAME as CHECKPOINT
from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.evaluate import evaluate_model
from builder.run_folder import load_run, load_run_dataset, save_run
from builder.train import TrainResult, check_metrics, train


def train_run(changes: dict, out: Path, progress: bool = True, resume: bool = False,
              checkpoint_every_s: float = 30.0) -> TrainResult:
    """`aerec train`: the default TrainConfig updated with `changes`, trained on its data and
    split, saved to the run folder `out`; returns the result (its `metrics` as in metrics.json).

    Training is checkpointed to out/checkpoint.pt; with `resume` an interrupted run continues
    from it (and ends with the same weights and metrics), and the checkpoint is removed once the
    run is saved. Raises ValueError for an unknown option or value, a checkpoint found without
    `resume` or one written by another config; FileNotFoundError for missing data.

    Under torchrun (see builder.distributed) every rank calls this: all join the process group
    and train together, every rank reads the checkpoint when resuming, only rank 0 writes the run
    folder and the checkpoint; every rank returns the same metrics."""
    out = Path(out)
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file() and not resume:
        raise ValueError(f"{checkpoint} exists: an interrupted run. Add --resume to continue it, "
                         "or remove it to start over")
    config = TrainConfig().updated(**changes)
    w = distributed.setup(config.device)
    dataset = load_dataset(config.data, config.split, config.seed)
    result = train(config, dataset, progress=progress, checkpoint_dir=out, checkpoint_every_s=checkpoint_every_s)
    try:
        check_metrics(result.metrics)  # never a run folder with NaN metrics
    except ValueError:
        checkpoint.unlink(missing_ok=True)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    if w.main:
        save_run(result, dataset, out)
        checkpoint.unlink(missing_ok=True)  # the run is whole: weights.safetensors replaces it
    distributed.barrier()  # the folder is whole before any rank returns
    return result


def evaluate_run(run_dir: Path) -> dict:
    """`aerec evaluate`: a run folder's test metrics recomputed from its saved weights and config
    (a blend's from its members', see builder.blend.evaluate_blend). Raises FileNotFoundError /
    ValueError as load_run and load_run_dataset do."""
    run_dir = Path(run_dir)
    if (run_dir / "blend.json").is_file():
        return evaluate_blend(run_dir)
    config, model = load_run(run_dir)
    dataset = load_run_dataset(run_dir)
    return evaluate_model(model, dataset, config, "cpu")
