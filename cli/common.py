"""What every command shares: the error exit and the metrics table."""
from __future__ import annotations

from pathlib import Path

import typer

# Where `aerec repository` writes and `aerec serve` / `aerec deploy` read by default: outside the
# committed model_repository/ (its configs and model.py files are source, a build never writes them).
DEFAULT_REPOSITORY = Path("runs/model_repository")


def fail(msg: str) -> None:
    """Print `error: MSG` in red on stderr and exit with status 2."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def check_data_files(flag: str, spec: str) -> None:
    """fail() unless every file the data word `spec` names (builder.data.sources.source_files:
    a path, a folder, a glob or csv:PATH?...) exists, before any work starts."""
    from builder.data.errors import DataFormatError
    from builder.data.sources import source_files
    try:
        files = source_files(spec)
    except DataFormatError as e:
        fail(f"{flag} {e}")
    missing = [f for f in files if not f.exists()]
    if missing:
        fail(f"{flag} {spec}: file not found" + (f" ({missing[0]})" if str(missing[0]) != spec else ""))


def print_metrics(metrics: dict) -> None:
    """A two-column table (metric, value); floats to 4 decimals, a distilled run's teacher in one row."""
    from rich.console import Console
    from rich.table import Table
    t = Table("metric", "value")
    for k, v in metrics.items():
        if k == "teacher":  # {"preset": name, phase: {"val_rmse", "best_epoch"}}
            v = "; ".join([v["preset"]] + [f"{phase} val_rmse {m['val_rmse']:.4f} at epoch {m['best_epoch']}"
                                           for phase, m in v.items() if phase != "preset"])
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)
