"""`aerec export`: a run's ONNX variants (and TensorRT plans where a GPU allows) under RUN_DIR/export/."""
from __future__ import annotations

from pathlib import Path

import typer

from cli.common import fail


def export(
    run_dir: Path,
    precision: str = typer.Option("fp32,fp16,int8", help="comma-separated: fp32, fp16, int8"),
    calibration: str = typer.Option("minmax", help="int8 calibration: minmax | entropy | percentile"),
    samples: int = typer.Option(256, help="training-user vectors used to calibrate int8"),
    tensorrt: bool = typer.Option(False, help="also build TensorRT plans (needs TensorRT and a GPU)"),
):
    """Export RUN_DIR to ONNX variants under RUN_DIR/export/ with a precision report."""
    from builder.export import ExportConfig, ExportError, export_run

    config = ExportConfig(precisions=[p.strip() for p in precision.split(",") if p.strip()],
                          calibration_method=calibration, calibration_samples=samples)
    try:
        out = export_run(run_dir, config)
    except (ExportError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo((out / "precision.md").read_text())
    if tensorrt:
        from builder.tensorrt_plans import build_export_plans
        for line in build_export_plans(out, config.precisions):
            typer.echo(line)
    typer.echo(f"export written to {out}")
