"""`aerec`: one entry point for the whole path. Each command parses, calls one library
function and prints; everything it does is importable without it."""
from __future__ import annotations

import json
import os
import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table("metric", "value")
    for k, v in metrics.items():
        if k == "teacher":  # {"preset": name, phase: {"val_rmse", "best_epoch"}}
            v = "; ".join([v["preset"]] + [f"{phase} val_rmse {m['val_rmse']:.4f} at epoch {m['best_epoch']}"
                                           for phase, m in v.items() if phase != "preset"])
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="run folder to write"),
    preset: Optional[str] = typer.Option(None, help="a named recipe (see `aerec presets`)"),
    model: Optional[str] = typer.Option(None, help="autorec-i | autorec-u | deeprec | sae | glocal-k; "
                                        "top-N: popularity | ease | mult-dae | mult-vae"),
    data: Optional[str] = typer.Option(None, help="ml-100k; a ratings file (u.data, ratings.dat, ratings.csv, "
                                       "Netflix combined_data_*.txt); a folder (Netflix training_set/); a quoted "
                                       "glob ('training_set/mv_*.txt'); or csv:PATH[?scale=LOW:HIGH]"),
    split: Optional[str] = typer.Option(None, help="u1..u5, ua, ub, random[:F], temporal:DATE, per-user[:F]"),
    seed: Optional[int] = typer.Option(None),
    hidden: Optional[str] = typer.Option(None, help="layer sizes, comma separated, e.g. 512,512,1024"),
    epochs: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    dropout: Optional[float] = typer.Option(None),
    l2: Optional[float] = typer.Option(None, help="AutoRec lambda"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    set_: list[str] = typer.Option([], "--set", help="any other config field, KEY=JSON (repeatable)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    resume: bool = typer.Option(False, help="continue an interrupted run from OUT/checkpoint.pt"),
    checkpoint_every: float = typer.Option(30.0, help="seconds between checkpoints (0: every epoch)"),
):
    """Train one model and write weights, config, metrics and curve to OUT.

    Training is checkpointed to OUT/checkpoint.pt (every --checkpoint-every seconds); after an
    interruption, the same command with --resume continues from the checkpoint and ends with
    the same metrics and weights as an uninterrupted run."""
    from builder.checkpoint import FILENAME as CHECKPOINT
    from builder.config import TrainConfig
    from builder.data.sources import load_dataset
    from builder.presets import preset as get_preset
    from builder.train import save_run, train as run_train

    changes = {}
    if preset:
        try:
            changes.update(get_preset(preset))
        except KeyError as e:
            _fail(str(e.args[0]))
    for key, val in dict(model=model, data=data, split=split, seed=seed, epochs=epochs, lr=lr,
                         batch_size=batch_size, dropout=dropout, l2=l2, device=device).items():
        if val is not None:
            changes[key] = val
    if hidden:
        changes["hidden"] = [int(h) for h in hidden.split(",")]
    for item in set_:
        key, _, raw = item.partition("=")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    if "blend" in changes:  # a preset made of other presets, stacked on a shared validation slice
        if resume:
            _fail("--resume applies to single models; a blend retrains its members")
        _train_blend(changes, out, quiet)
        return
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file() and not resume:
        _fail(f"{checkpoint} exists: an interrupted run. Add --resume to continue it, or remove it to start over")
    try:
        config = TrainConfig().updated(**changes)
        dataset = load_dataset(config.data, config.split, config.seed)
        result = run_train(config, dataset, progress=not quiet, checkpoint_dir=out,
                           checkpoint_every_s=checkpoint_every)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    save_run(result, dataset, out)
    checkpoint.unlink(missing_ok=True)  # the run is whole: weights.safetensors replaces it
    _print_metrics(result.metrics)
    typer.echo(f"run written to {out}")


def _train_blend(changes: dict, out: Path, quiet: bool) -> None:
    from builder.blend import save_blend, train_blend
    from builder.config import TrainConfig
    from builder.data.sources import load_dataset
    from builder.presets import preset as get_preset
    members, val_fraction = changes.pop("blend"), changes.pop("val_fraction", 0.05)
    try:
        configs = [TrainConfig().updated(**{**get_preset(m), **changes}) for m in members]
        dataset = load_dataset(configs[0].data, configs[0].split, configs[0].seed)
        result = train_blend(configs, dataset, val_fraction, configs[0].seed, progress=not quiet)
    except (ValueError, KeyError, FileNotFoundError) as e:
        _fail(str(e))
    save_blend(result, dataset, out, val_fraction, configs[0].seed)
    _print_metrics({k: v for k, v in result.metrics.items() if not isinstance(v, list)})
    typer.echo(f"blend of {', '.join(members)} (weights {', '.join(f'{w:.3f}' for w in result.weights)}) "
               f"written to {out}")


@app.command()
def evaluate(run_dir: Path):
    """Recompute a run's test metrics from its saved weights and config."""
    from builder.data.sources import load_dataset
    from builder.evaluate import evaluate_model
    from builder.train import load_run

    if (run_dir / "blend.json").is_file():
        from builder.blend import evaluate_blend
        _print_metrics(evaluate_blend(run_dir))
        return
    try:
        config, model = load_run(run_dir)
        dataset = load_dataset(config.data, config.split, config.seed)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    _print_evaluation(evaluate_model(model, dataset, config, "cpu"))


def _print_evaluation(metrics: dict) -> None:
    """Rating errors (if any), then each top-N figure beside the popularity baseline's and the lift."""
    from rich.console import Console
    from rich.table import Table
    ranking = [k for k in metrics if f"popularity_{k}" in metrics]
    _print_metrics({k: v for k, v in metrics.items()
                    if k not in ranking and not k.startswith(("popularity_", "lift_"))})
    t = Table("metric", "model", "popularity", "lift")
    for k in ranking:
        lift = metrics.get(f"lift_{k}")
        t.add_row(k, f"{metrics[k]:.4f}", f"{metrics[f'popularity_{k}']:.4f}", "-" if lift is None else f"{lift:.2f}x")
    Console().print(t)


@app.command()
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
        _fail(str(e))
    typer.echo((out / "precision.md").read_text())
    if tensorrt:
        from builder.tensorrt_plans import build_plans, tensorrt_unavailable
        reason = tensorrt_unavailable()
        if reason:
            typer.echo(reason)
        else:
            n_inputs = json.loads((out / "export_config.json").read_text())["n_inputs"]
            for meta in build_plans(out, config.precisions, n_inputs):
                typer.echo(f"plan {meta['precision']}: TensorRT {meta['tensorrt']} on {meta['gpu']}, "
                           f"matches ONNX Runtime: {meta['matches_onnxruntime']}")
    typer.echo(f"export written to {out}")


@app.command()
def repository(
    run_dir: Path,
    out: Path = typer.Option(Path("model_repository"), "--out"),
    variant: list[str] = typer.Option(["onnx"], help="onnx | onnx_int8 (repeatable); with --rating-model, "
                                      "the rating model's (the top-N model is served in fp32)"),
    tuned: Optional[Path] = typer.Option(None, help="a perf results folder (or its tuned.json): use its best knobs"),
    rating_model: Optional[Path] = typer.Option(None, "--rating-model",
                                                help="a rating model's run, served beside the top-N model RUN_DIR: "
                                                     "RUN_DIR ranks the list, this one predicts the ratings shown"),
):
    """Add RUN_DIR's exported networks to a Triton model repository (a new version each build).
    RUN_DIR is a top-N model (it ranks) or a rating model (it ranks by predicted rating)."""
    from builder.repository import RepositoryError, Tuning, write_repository
    try:
        tuning = Tuning.load(tuned) if tuned else None
        manifest = write_repository(run_dir, out, variant, tuning, rating_run=rating_model)
    except RepositoryError as e:
        _fail(str(e))
    for name, version in manifest["models"].items():
        typer.echo(f"{out}/{name}/{version}")


@app.command()
def perf(
    run_dir: Optional[Path] = typer.Argument(None, help="run folder to serve (a top-N or a rating model); "
                                             "default: the ease preset ranking beside the deeprec preset rating"),
    rating_model: Optional[Path] = typer.Option(None, "--rating-model",
                                                help="a rating model served beside the top-N RUN_DIR"),
    full: bool = typer.Option(False, "--full", help="the long sweep (make perf-full)"),
    out: Path = typer.Option(Path("perf/results"), "--out"),
    p99_budget_ms: Optional[float] = typer.Option(
        2.0, "--p99-budget-ms", help="tuning: choose among configurations whose lone user's p99 is within this"
        " (Model Analyzer's latency constraint); 0: the best score whatever its latency"),
):
    """perf_analyzer sweeps, baselines, roofline and tuning -> OUT/<stamp>/report.md."""
    from perf.analyzer import PerfAnalyzerMissing
    from perf.harness import run_perf
    try:
        folder = run_perf(run_dir, full=full, results_root=out, p99_budget_ms=p99_budget_ms or None,
                          rating_run=rating_model)
    except PerfAnalyzerMissing as e:
        _fail(str(e))
    typer.echo((folder / "report.md").read_text())
    typer.echo(f"report: {folder / 'report.md'}")


def _admin_key(path: Path, create: bool) -> str:
    """Read the admin key from PATH, or (serve) make a random one there readable by its owner only."""
    import secrets
    import stat
    if path.is_file():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            _fail(f"{path}: readable by others; chmod 600 it (it unlocks model load/unload)")
        return path.read_text().strip()
    if not create:
        _fail(f"{path}: no admin key file (the server's `aerec serve --admin-key-file` writes it)")
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    typer.echo(f"admin key written to {path} (mode 600)")
    return key


@app.command()
def serve(
    repository: Path = typer.Option(Path("model_repository"), "--repository"),
    http_port: int = typer.Option(8000), grpc_port: int = typer.Option(8001),
    address: str = typer.Option("127.0.0.1", help="bind address; loopback unless you ask"),
    admin_key_file: Optional[Path] = typer.Option(
        None, help="enable model load/unload (e.g. `aerec reload`) for holders of the key in this file "
                   "(created, mode 600, if missing); without it nobody can change what is served"),
):
    """Run the embedded Triton server on REPOSITORY until Ctrl-C."""
    import time as _time
    from server.admin import RESTRICTED
    from server.launcher import TritonServer
    if not repository.is_dir():
        _fail(f"{repository}: no model repository; build one with `aerec repository RUN_DIR`")
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM (what service managers send) both stop the server cleanly.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    key = _admin_key(admin_key_file, create=True) if admin_key_file else None
    try:
        server = TritonServer(repository, http_port, grpc_port, address, admin_key=key)
    except ValueError as e:
        _fail(str(e))
    server.start()
    typer.echo(f"serving {repository}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops)")
    typer.echo(f"server log: {server.log}")
    typer.echo(f"restricted APIs ({RESTRICTED}): "
               + (f"open to holders of the key in {admin_key_file}" if key else "closed (no --admin-key-file)"))
    try:
        while server.process.poll() is None:
            _time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def reload(
    admin_key_file: Path = typer.Option(..., help="the key file the server was started with"),
    model: list[str] = typer.Option([], help="only these models (repeatable); default all"),
    url: str = typer.Option("127.0.0.1:8001", help="server address"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
):
    """Make a running server load the newest versions in its repository, without dropping requests
    (after `aerec repository RUN --out` added a version)."""
    from client import RecommenderClient
    key = _admin_key(admin_key_file, create=False)
    try:
        loaded = RecommenderClient(url, protocol, admin_key=key).reload(model or None)
    except Exception as e:  # the server's own message names the problem
        _fail(str(e))
    typer.echo(f"reloaded: {', '.join(loaded)}")


@app.command()
def recommend(
    user: Optional[int] = typer.Option(None, help="a known user's raw id"),
    rate: list[str] = typer.Option([], help="ITEM=RATING (repeatable): a new user's ratings"),
    k: int = typer.Option(10, "-k", help="how many recommendations"),
    url: str = typer.Option("127.0.0.1:8001", help="server address"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
):
    """Top-K recommendations from a running server, as a table of titles, scores and (where the
    server has a rating model) predicted ratings."""
    from rich.console import Console
    from rich.table import Table
    from client import RecommenderClient
    try:
        ratings = {int(a): float(b) for a, b in (r.split("=", 1) for r in rate)}
    except ValueError:
        _fail(f"--rate takes ITEM=RATING, e.g. --rate 50=5; got {rate}")
    try:
        rec = RecommenderClient(url, protocol).recommend(user_id=user, ratings=ratings or None, k=k)
    except Exception as e:  # the server's own message names the problem
        _fail(str(e))
    ratings = rec.predicted_ratings
    t = Table("#", "item", "title", "score", *(["predicted rating"] if ratings is not None else []))
    for i, (item, title, score) in enumerate(zip(rec.item_ids, rec.titles, rec.scores), 1):
        t.add_row(str(i), str(item), title, f"{score:.3f}", *([f"{ratings[i - 1]:.2f}"] if ratings is not None else []))
    Console().print(t)
    if rec.unknown_items:
        typer.echo(f"{rec.unknown_items} rated item id(s) unknown to the model were skipped")
    if not rec.complete:  # rated items are never recommended
        typer.echo(f"only {rec.n_recommended} of {k} recommended: no other unrated item is left")


@app.command()
def results(run_dirs: list[Path]):
    """One table over run folders: model, RMSE, MAE (- for top-N models), recall@10, NDCG@10 and
    popularity's recall@10 beside, best epoch, seconds."""
    from rich.console import Console
    from rich.table import Table

    def fmt(m: dict, key: str) -> str:
        v = m.get(key)
        return "-" if v is None else f"{v:.4f}"
    t = Table("model", "test RMSE", "test MAE", "recall@10", "ndcg@10", "popularity recall@10", "best epoch",
              "seconds")
    t.add_column("run", no_wrap=True)
    for d in run_dirs:
        try:
            m = json.loads((d / "metrics.json").read_text())
            c = ({"model": "blend: " + "+".join(m["members"])} if (d / "blend.json").is_file()
                 else json.loads((d / "config.json").read_text()))
        except (OSError, json.JSONDecodeError) as e:
            _fail(f"{d}: not a finished run folder ({e})")
        t.add_row(c["model"], fmt(m, "test_rmse"), fmt(m, "test_mae"), fmt(m, "recall@10"), fmt(m, "ndcg@10"),
                  fmt(m, "popularity_recall@10"), str(m.get("best_epoch", "-")), f"{m['train_seconds']:.1f}", str(d))
    Console().print(t)


@app.command()
def presets():
    """List the named training recipes."""
    from builder.presets import PRESETS
    for name, p in PRESETS.items():
        typer.echo(f"{name:10s} {json.dumps(p)}")


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    app()


if __name__ == "__main__":
    main()
