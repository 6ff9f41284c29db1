"""`aerec export`: a run's ONNX variants (and TensorRT plans where a GPU allows) under RUN_DIR/export/,
each compared with PyTorch by polygraphy and parse/build-checked by TensorRT (precision.md)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.common import fail


def export(
    run_dir: Path,
    precision: str = typer.Option("fp32,fp16,int8", help="comma-separated: fp32, fp16, int8"),
    calibration: str = typer.Option("minmax", help="int8 calibration: minmax | entropy | percentile"),
    samples: int = typer.Option(256, help="training-user vectors used to calibrate int8"),
    tensorrt: bool = typer.Option(False, help="also build TensorRT plans for Triton (needs full TensorRT and a "
                                  "GPU; elsewhere says why and parse/build-checks each graph with what imports)"),
    max_test_rows: int = typer.Option(0, help="compare on a seeded sample of at most this many test users "
                                      "(0: all; each is a dense row: sample for catalogues of a million items)"),
):
    """Export RUN_DIR to ONNX variants under RUN_DIR/export/ with a precision report."""
    from builder.export import ExportConfig, ExportError, export_run

    config = ExportConfig(precisions=[p.strip() for p in precision.split(",") if p.strip()],
                          calibration_method=calibration, calibration_samples=samples, tensorrt_plans=tensorrt,
                          max_test_rows=max_test_rows)
    try:
        out = export_run(run_dir, config)
    except (ExportError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo((out / "precision.md").read_text())
    if tensorrt:
        report = json.loads((out / "precision.json").read_text())
        plans = report["tensorrt_plans"]
        for meta in plans.get("built", []):
            typer.echo(f"plan {meta['precision']}: TensorRT {meta['tensorrt']} on {meta['gpu']}, "
                       f"profile {meta['profile']}")
        if "skipped" in plans:
            typer.echo(plans["skipped"])
            for variant, c in report["tensorrt"].items():
                if c["library"]:
                    verdict = "parses and builds" if c["builds"] else f"FAILS: {c['errors'][0].splitlines()[0]}"
                    typer.echo(f"check {variant} ({report[variant]['file']}) with {c['library']}: {verdict}")
    typer.echo(f"export written to {out}")
