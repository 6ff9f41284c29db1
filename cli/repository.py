"""`aerec repository`: a run's exported networks added to a Triton model repository."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import DEFAULT_REPOSITORY, fail


def repository(
    run_dir: Path,
    out: Path = typer.Option(DEFAULT_REPOSITORY, "--out"),
    variant: list[str] = typer.Option(["onnx"], help="onnx | onnx_fp16 | onnx_int8 (repeatable); with "
                                      "--rating-model, the rating model's (the top-N model is served in fp32)"),
    tuned: Optional[Path] = typer.Option(None, help="a perf results folder (or its tuned.json): use its best knobs"),
    rating_model: Optional[Path] = typer.Option(None, "--rating-model",
                                                help="a rating model's run, served beside the top-N model RUN_DIR: "
                                                     "RUN_DIR ranks the list, this one predicts the ratings shown"),
    device: str = typer.Option("cpu", help="cpu | gpu: gpu serves the networks on KIND_GPU instances, as "
                               "TensorRT plans where `aerec export --tensorrt` built them, else ONNX Runtime "
                               "with its TensorRT accelerator; the Python steps stay on the CPU"),
    cold_start: str = typer.Option("popularity", "--cold-start",
                                   help="popularity | refuse: a user the model cannot rank (unknown USER_ID, or "
                                        "no training ratings and no known item sent) gets the popularity list "
                                        "(SOURCE popularity), or a 400"),
    keep_previous: bool = typer.Option(False, "--keep-previous",
                                       help="keep serving the version OUT served before this build, as the "
                                            "pipeline recommend_previous beside recommend (the new one): both "
                                            "versions loaded, for an A/B split or a shadow"),
):
    """Add RUN_DIR's exported networks to a Triton model repository (a new version each build).
    RUN_DIR is a top-N model (it ranks) or a rating model (it ranks by predicted rating)."""
    from builder.repository import RepositoryError, Tuning, write_repository
    try:
        tuning = Tuning.load(tuned) if tuned else None
        manifest = write_repository(run_dir, out, variant, tuning, rating_run=rating_model, device=device,
                                    cold_start=cold_start, keep_previous=keep_previous)
    except RepositoryError as e:
        fail(str(e))
    for name, version in manifest["models"].items():
        typer.echo(f"{out}/{name}/{version}")
    if manifest.get("previous"):
        kept = ", ".join(f"{n} {v}" for n, v in manifest["previous"]["models"].items())
        typer.echo(f"{out}/{manifest['previous']['pipeline']}: the previous version beside recommend ({kept})")


def blocklist(
    repo: Path = typer.Argument(DEFAULT_REPOSITORY, help="a built repository"),
    add: list[str] = typer.Option([], help="ITEM,ITEM,... (repeatable): items to block"),
    remove: list[str] = typer.Option([], help="ITEM,ITEM,... (repeatable): items to unblock"),
    file: list[Path] = typer.Option([], "--file", help="a file of item ids to block, one a line"),
):
    """Change the repository's blocklist (items no list returns: out of stock, withdrawn), without
    retraining; `aerec reload` then makes a running server apply it. Prints the blocklist."""
    from builder.repository import RepositoryError, update_blocklist
    from cli.recommend import id_list
    try:
        added, removed = id_list(add, file) or [], id_list(remove, []) or []
        ids = update_blocklist(repo, added, removed)
    except (RepositoryError, OSError) as e:
        fail(str(e))
    typer.echo(f"{repo}/blocklist.txt: {len(ids)} blocked item(s){': ' + ', '.join(ids[:20]) if ids else ''}"
               f"{' ...' if len(ids) > 20 else ''}")
    typer.echo("a running server applies it after `aerec reload` (a server started with --admin-key-file), "
               "or when it restarts")
