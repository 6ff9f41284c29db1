"""`aerec train` (one model, or a blend preset, into a run folder) and `aerec presets`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from cli.common import fail, print_metrics


def train(
    out: Path = typer.Option(..., "--out", help="run folder to write"),
    preset: Optional[str] = typer.Option(None, help="a named recipe (see `aerec presets`)"),
    model: Optional[str] = typer.Option(None, help="autorec-i | autorec-u | deeprec | sae | glocal-k; top-N: "
                                        "popularity | ease | ease-lowrank | mult-dae | mult-vae | elsa | recvae"),
    data: Optional[str] = typer.Option(None, help="ml-100k; a ratings file (u.data, ratings.dat, ratings.csv, "
                                       "Netflix combined_data_*.txt); a folder (Netflix training_set/); a quoted "
                                       "glob ('training_set/mv_*.txt'); your own data: csv:PATH, tsv:PATH, "
                                       "parquet:PATH "
                                       "[?user=COL&item=COL&time=COL&weight=COL|rating=COL"
                                       "&repeats=sum|count|last&scale=LO:HI], or a path ending .csv/.tsv/"
                                       ".parquet (also .gz)"),
    split: Optional[str] = typer.Option(None, help="u1..u5, ua, ub, random[:F], temporal:DATE, per-user[:F], last:N"),
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
    nproc: int = typer.Option(1, "--nproc", help="data-parallel: train in N processes under torchrun "
                              "(DistributedDataParallel; gloo on CPU, NCCL on CUDA)"),
):
    """Train one model and write weights, config, metrics and curve to OUT.

    Training is checkpointed to OUT/checkpoint.pt (every --checkpoint-every seconds); after an
    interruption, the same command with --resume continues from the checkpoint and ends with
    the same metrics and weights as an uninterrupted run.

    --nproc N re-runs this command under torchrun, the same as
    `python -m torch.distributed.run --standalone --nproc-per-node N -m cli.main train ...`
    (or `torchrun --standalone --nproc-per-node N -m cli.main train ...`): each rank trains its
    slice of every batch, rank 0 writes OUT; --resume works the same with the same N. Under
    torchrun (WORLD_SIZE set) --nproc is ignored: the launcher decides the number of ranks."""
    from builder.stages import training_changes
    try:  # parse
        changes = training_changes(preset, dict(model=model, data=data, split=split, seed=seed, epochs=epochs, lr=lr,
                                                batch_size=batch_size, dropout=dropout, l2=l2, device=device),
                                   hidden, set_)
    except ValueError as e:
        fail(str(e))
    device = _check_options(changes)  # config: before any launch, training or run folder
    _run(changes, device, out, quiet, resume, checkpoint_every, nproc)  # run


def _run(changes: dict, device: str, out: Path, quiet: bool, resume: bool, checkpoint_every: float,
         nproc: int) -> None:
    """Run checked `changes`: relaunched under torchrun for --nproc, a blend preset, or one model
    trained inside the process group joined here, at the top (builder.distributed.session)."""
    from builder import distributed
    if nproc != 1 and not distributed.under_launcher():
        if "train" not in sys.argv:
            fail("--nproc re-runs `aerec train ...` from its command line; call it from a shell")
        try:
            args = _without_nproc(sys.argv[sys.argv.index("train") + 1:])
            command = distributed.torchrun_command(nproc, "cli.main", ["train", *args])
        except ValueError as e:
            fail(str(e))
        # torchrun sets OMP_NUM_THREADS=1 where it is unset, with a banner saying so; each rank
        # gets its share of the cores instead (the user's own setting wins).
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        raise typer.Exit(subprocess.run(command, env=env).returncode)

    if "blend" in changes:  # a preset made of other presets, stacked on a shared validation slice
        if distributed.under_launcher():
            fail("a blend trains its members one after another; run it without --nproc / torchrun")
        if resume:
            fail("--resume applies to single models; a blend retrains its members")
        _train_blend(changes, out, quiet)
        return
    from builder.stages import train_run
    with distributed.session(device) as w:
        try:
            result = train_run(changes, out, progress=not quiet, resume=resume, checkpoint_every_s=checkpoint_every)
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
    if w.main:
        print_metrics(result.metrics)
        typer.echo(f"run written to {out}")


def _check_options(changes: dict) -> str:
    """The device the run trains on, once `changes` make a valid config; exit 2 with a one-line
    error for an unknown option or value, or an option of another model family
    (builder.models.registry.validate); a blend's members are checked one by one."""
    from builder.blend import member_configs
    from builder.config import TrainConfig
    from builder.models import validate
    try:
        if "blend" in changes:
            return member_configs(changes)[0][0].device
        return validate(TrainConfig().updated(**changes)).device
    except ValueError as e:
        fail(str(e))


def _without_nproc(args: list[str]) -> list[str]:
    """`args` less `--nproc N` / `--nproc=N` (the workers must not launch again)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _train_blend(changes: dict, out: Path, quiet: bool) -> None:
    from builder.blend import train_blend_run
    try:
        result = train_blend_run(changes, out, progress=not quiet)
    except (ValueError, KeyError, FileNotFoundError) as e:
        fail(str(e))
    print_metrics({k: v for k, v in result.metrics.items() if not isinstance(v, list)})
    typer.echo(f"blend of {', '.join(changes['blend'])} (weights {', '.join(f'{w:.3f}' for w in result.weights)}) "
               f"written to {out}")


def presets():
    """List the named training recipes."""
    from builder.presets import PRESETS
    for name, p in PRESETS.items():
        typer.echo(f"{name:10s} {json.dumps(p)}")
