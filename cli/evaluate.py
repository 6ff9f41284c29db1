"""`aerec evaluate` (a run's test metrics recomputed, or a saved file's or a running server's lists
scored against a run's test split) and `aerec results` (one table over runs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli.common import fail, print_metrics


def evaluate(
    run_dir: Optional[Path] = typer.Argument(None, help="the run folder whose test metrics to recompute"),
    recommendations: Optional[Path] = typer.Option(None, help="a saved recommendations file (.parquet, .csv, "
                                                   ".jsonl with user_id, item_id, rank) to score instead"),
    run: Optional[Path] = typer.Option(None, "--run", help="with --recommendations or --url: the run whose test "
                                       "split scores the lists"),
    url: Optional[str] = typer.Option(None, help="HOST:PORT of a running server (`aerec serve`) whose served "
                                      "lists to score instead"),
    protocol: str = typer.Option("grpc", help="with --url: grpc | http"),
):
    """Recompute a run's test metrics from its saved weights and config, or score against a run's
    test split a saved recommendations file (`aerec batch`'s, or any system's) or the lists a
    running server serves (with its predicted ratings' RMSE where it has a rating model)."""
    if url is not None:
        if recommendations is not None:
            fail("give --recommendations FILE or --url HOST:PORT, not both")
        _evaluate_served(url, run or run_dir, protocol)
        return
    if recommendations is not None:
        _evaluate_file(recommendations, run or run_dir)
        return
    if run_dir is None:
        fail("give a run folder, --recommendations FILE --run RUN or --url HOST:PORT --run RUN")
    from builder.stages import evaluate_run
    try:
        metrics = evaluate_run(run_dir)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    _print_evaluation(metrics)


def _evaluate_file(path: Path, run_dir: Optional[Path]):
    """The top-N figures of a saved file, with the same functions and test users as a run's."""
    from builder.batch import evaluate_recommendations
    if run_dir is None:
        fail("--recommendations needs --run RUN: the run whose test split scores it")
    try:
        metrics = evaluate_recommendations(path, run_dir)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    counts = ("test_users_missing", "unknown_users", "unknown_items")
    _print_evaluation({k: v for k, v in metrics.items() if k not in counts})
    print_metrics({k: metrics[k] for k in counts})


def _evaluate_served(url: str, run_dir: Optional[Path], protocol: str):
    """The served lists' top-N figures (and served RMSE), with the same functions and test users
    as a run's."""
    from builder.served_evaluation import evaluate_served
    from client import RecommenderError
    if run_dir is None:
        fail("--url needs --run RUN: the run whose test split scores the served lists")
    try:
        metrics = evaluate_served(url, run_dir, protocol)
    except (ValueError, OSError, RecommenderError) as e:   # OSError: ConnectionError, FileNotFoundError
        fail(str(e))
    _print_evaluation(metrics)


def _print_evaluation(metrics: dict) -> None:
    """Rating errors (if any), then each top-N figure beside the popularity baseline's and the lift."""
    from rich.console import Console
    from rich.table import Table
    ranking = [k for k in metrics if f"popularity_{k}" in metrics]
    rest = {k: v for k, v in metrics.items() if k not in ranking and not k.startswith(("popularity_", "lift_"))}
    users = rest.pop("test_users", None) if ranking else None   # the top-N table's title, not a row
    if rest:
        print_metrics(rest)
    if not ranking:
        return
    t = Table("metric", "model", "popularity", "lift",
              title=None if users is None else f"top-N over {users} test users")
    for k in ranking:
        lift = metrics.get(f"lift_{k}")
        t.add_row(k, f"{metrics[k]:.4f}", f"{metrics[f'popularity_{k}']:.4f}", "-" if lift is None else f"{lift:.2f}x")
    Console().print(t)


def _fmt(m: dict, key: str) -> str:
    v = m.get(key)
    return "-" if v is None else f"{v:.4f}"


def _results_row(d: Path) -> tuple[list[str] | None, str | None]:
    """(the table's row of run folder `d`, None) or (None, why it is not a finished run)."""
    if not d.is_dir():
        return None, "not a folder" if d.exists() else "not found"
    if not (d / "metrics.json").is_file():
        # An interrupted `aerec train` leaves its checkpoint; a repository or an export folder has neither.
        resume = "; checkpoint.pt: an interrupted train, finish it with --resume" if (d / "checkpoint.pt").is_file() \
            else ""
        return None, f"not a finished run folder (no metrics.json{resume})"
    try:
        m = json.loads((d / "metrics.json").read_text())
        c = ({"model": "blend: " + "+".join(m["members"])} if (d / "blend.json").is_file()
             else json.loads((d / "config.json").read_text()))
        return [c["model"], _fmt(m, "test_rmse"), _fmt(m, "test_mae"), _fmt(m, "recall@10"), _fmt(m, "ndcg@10"),
                _fmt(m, "popularity_recall@10"), str(m.get("best_epoch", "-")), f"{m['train_seconds']:.1f}",
                str(d)], None
    except FileNotFoundError as e:
        return None, f"not a finished run folder (no {Path(e.filename).name})"
    except (OSError, ValueError, KeyError, TypeError) as e:   # ValueError: json.JSONDecodeError
        return None, f"not a finished run folder (unreadable: {type(e).__name__}: {e})"


def results(run_dirs: list[Path]):
    """One table over run folders: model, RMSE, MAE (- for top-N models), recall@10, NDCG@10 and
    popularity's recall@10 beside, best epoch, seconds. Folders that are not finished runs (a
    model repository, an interrupted train) are skipped with a line saying why; exit status 2
    when no folder is a finished run."""
    from rich.console import Console
    from rich.table import Table
    t = Table("model", "test RMSE", "test MAE", "recall@10", "ndcg@10", "popularity recall@10", "best epoch",
              "seconds")
    t.add_column("run", no_wrap=True)
    skipped = []
    for d in run_dirs:
        row, why = _results_row(d)
        if row is None:
            skipped.append(f"skipped {d}: {why}")
        else:
            t.add_row(*row)
    if t.row_count:
        # Nine columns of figures: at a pipe's or a narrow terminal's 80 columns rich would cut each
        # to "0.93…"; a table that does not fit wraps its lines instead.
        Console(width=max(Console().width, 160)).print(t)
    for line in skipped:
        typer.echo(line, err=True)
    if not t.row_count:
        fail(f"none of the {len(run_dirs)} folder(s) is a finished run folder (made by `aerec train`)")
