"""`aerec batch`: every user's top-K from a run folder, written to a Parquet, CSV or JSONL table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import check_data_files, fail


def batch(
    run: Path = typer.Argument(..., help="the run folder whose model ranks (made by `aerec train`)"),
    out: Path = typer.Option(..., "--out", help="the table to write: .parquet, .csv or .jsonl (with --engine ray "
                             "also a folder, for Ray's Parquet part files)"),
    users: Optional[Path] = typer.Option(None, help="a file of user ids, one a line (default: every user)"),
    histories: Optional[str] = typer.Option(None, help="histories to rank instead, each user folded in as "
                                            "`recommend` does with ITEM_IDS/RATINGS: user id, item id, optional "
                                            "rating, in any form `aerec train --data` reads (a ratings file, "
                                            "a .csv/.tsv/.parquet log, or csv:PATH?user=COL&item=COL to name "
                                            "the columns)"),
    exclude_file: Optional[Path] = typer.Option(None, "--exclude-file", help="items never to list: one item id a "
                                                "line (every user) or USER_ID,ITEM_ID (that user)"),
    include_file: Optional[Path] = typer.Option(None, "--include-file", help="the only items to list: one item id "
                                                "a line (every user) or USER_ID,ITEM_ID (that user)"),
    top_k: int = typer.Option(10, "--top-k", "-k", help="items per user: 1..the catalogue's items"),
    rating_model: Optional[Path] = typer.Option(None, "--rating-model", help="a rating model's run over the same "
                                                "data: adds its predicted rating of each item"),
    chunk_size: int = typer.Option(4096, "--chunk-size", help="users scored at a time (memory is per chunk)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted job from its finished parts"),
    device: str = typer.Option("cpu", help="torch device that scores (cpu, as `aerec evaluate`, or cuda)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar and no summary"),
    engine: str = typer.Option("local", help="local (this process, PyTorch) or ray (the exported ONNX graph "
                               "in Ray Data actors; needs pip install 'aerec[batch]')"),
    address: Optional[str] = typer.Option(None, help="--engine ray: the cluster to join (auto, or "
                                          "ray://HOST:10001); default: start a local Ray"),
):
    """Top-K recommendations for every user of a run (or --users, or the users of --histories),
    ranked as `aerec evaluate` and the server rank them (training items masked, --exclude-file /
    --include-file as EXCLUDE_IDS / INCLUDE_IDS), with a manifest beside the table."""
    from builder.batch import batch_recommend
    for flag, path in (("--users", users), ("--exclude-file", exclude_file), ("--include-file", include_file)):
        if path is not None and not path.exists():
            fail(f"{flag} {path}: file not found")
    if histories is not None:
        check_data_files("--histories", histories)
    if engine not in ("local", "ray"):
        fail(f"--engine {engine!r}: choose local or ray")
    if engine == "local" and address is not None:
        fail("--address is for --engine ray")
    if engine == "ray" and (rating_model is not None or resume or device != "cpu"):
        fail("--engine ray takes no --rating-model, --resume or --device (ONNX Runtime on the CPUs of the "
             "cluster; a failed job is run again); use the local engine for them")
    try:
        if engine == "ray":
            from builder.batch_ray import batch_recommend_ray
            m = batch_recommend_ray(run, out, users, top_k, chunk_size, address=address, progress=not quiet,
                                    histories=histories, exclude_file=exclude_file, include_file=include_file)
        else:
            m = batch_recommend(run, out, users, rating_model, top_k, chunk_size, resume, progress=not quiet,
                                device=device, histories=histories, exclude_file=exclude_file,
                                include_file=include_file)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if not quiet:
        typer.echo(f"{m['rows']} rows for {m['users']} users -> {out} in {m['seconds']:.1f} s "
                   f"({m['users'] / max(m['seconds'], 1e-9):.0f} users/s); manifest beside it")
        skipped = {k: m[k] for k in ("history_unknown_items", "history_users_without_known_items",
                                     "rules_unknown_items", "rules_unknown_users") if m.get(k)}
        if skipped:
            typer.echo("skipped (ids the run does not know): " + ", ".join(f"{k}={v}" for k, v in skipped.items()))
