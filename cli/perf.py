"""`aerec perf`: the measurement run (perf_analyzer sweeps, baselines, roofline, tuning) and its report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import fail


def perf(
    run_dir: Optional[Path] = typer.Argument(None, help="run folder to serve (a top-N or a rating model); "
                                             "default: the ease-values preset ranking beside the deeprec rating"),
    rating_model: Optional[Path] = typer.Option(None, "--rating-model",
                                                help="a rating model served beside the top-N RUN_DIR"),
    full: bool = typer.Option(False, "--full", help="the long sweep (make perf-full)"),
    out: Path = typer.Option(Path("perf/results"), "--out"),
    p99_budget_ms: Optional[float] = typer.Option(
        2.0, "--p99-budget-ms", help="tuning: choose among configurations whose lone user's p99 is within this"
        " (Model Analyzer's latency constraint); 0: the best score whatever its latency"),
    model_analyzer: bool = typer.Option(
        False, "--model-analyzer", help="also run Triton Model Analyzer (local launch mode, our tritonserver) over "
        "the ranker network and the ensemble; its best configs go beside the tuner's choice"),
    peers: Optional[str] = typer.Option(
        None, "--peers", help="comma-separated serving peers to compare (fastapi,litserve,ray_serve; default all; "
        "'none': none)"),
):
    """perf_analyzer sweeps, baselines, roofline and tuning -> OUT/<stamp>/report.md."""
    from perf.analyzer import PerfAnalyzerMissing
    from perf.harness import run_perf
    try:
        folder = run_perf(run_dir, full=full, results_root=out, p99_budget_ms=p99_budget_ms or None,
                          rating_run=rating_model, model_analyzer=model_analyzer,
                          peers=_peers(peers))
    except (PerfAnalyzerMissing, ValueError) as e:
        fail(str(e))
    typer.echo((folder / "report.md").read_text())
    typer.echo(f"report: {folder / 'report.md'}")


def _peers(text: str | None) -> list[str] | None:
    """--peers: None (all), [] ('none') or the named peers; ValueError names an unknown one."""
    from perf.peers import PEERS
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)}")
    return names
