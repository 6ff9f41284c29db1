import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(2)

# Files that start Ray (a local instance, a Cluster of raylets, Ray Serve): under pytest-xdist
# they share one worker, since two Ray instances at once contend for ports and ~/.ray's token.
RAY_FILES = {"test_batch_ray.py", "test_batch_inputs.py", "test_peers.py"}


@pytest.hookimpl(optionalhook=True)   # a hook of pytest-xdist's: no error where it is not installed
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler for `make test` (two workers): each file runs whole on one
    worker, so its module fixtures (trained runs, live servers) are built once, and the files
    that start Ray run on the same worker. (xdist's own `--dist loadgroup` marks are lost on
    pytest 9, which keeps a node's id where xdist no longer rewrites it.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "ray" if Path(path).name in RAY_FILES else path

    return FileScheduling(config, log)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def ml100k():
    from builder.data import load_movielens_100k
    return load_movielens_100k()


@pytest.fixture(scope="session")
def u1(ml100k):
    from builder.data import build_dataset, split_canonical
    train, test = split_canonical(ml100k, "u1")
    return build_dataset(ml100k, train, test, "ml-100k/u1")


def aerec(*args) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, from this checkout. Ray's settings pass through: once a local
    `ray.init()` in this process has turned Ray's token authentication on (RAY_AUTH_MODE, Ray >=
    2.60's default for a new local cluster), a CLI joining a cluster started here needs the same
    mode and the token under HOME."""
    ray = {k: v for k, v in os.environ.items() if k.startswith("RAY_") or k == "HOME"}
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200", **ray})


def cli(*args) -> subprocess.CompletedProcess:
    """The CLI in this process (typer's CliRunner): the same app, exit status, stdout and stderr
    as `aerec`, without a new interpreter's seconds of imports. For refusals and quick commands;
    `aerec()` for what must be a process of its own (a kill, Ray, DDP, the console script). An
    exception the app did not turn into an exit status is raised here, where a process would
    have printed a traceback."""
    from typer.testing import CliRunner

    from cli.main import app
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="session")
def ease(tmp_path_factory):
    """EASE (closed form: seconds) on ML-100K u1, without an export (the Ray engine exports it)."""
    from builder.stages import train_run
    out = tmp_path_factory.mktemp("runs") / "ease"
    train_run({"model": "ease", "device": "cpu"}, out, progress=False)
    return out


def small_rater_config():
    """A rating model for tests that need any rater, not a good one: a small user-based SAE,
    two epochs (seconds on ML-100K)."""
    from builder.config import TrainConfig
    return TrainConfig(model="sae", hidden=[16, 8], epochs=2, batch_size=64, device="cpu")


_SHARED = {"root": None, "runs": {}}


@pytest.fixture(scope="session", autouse=True)
def _shared_runs_folder(tmp_path_factory):
    """The session's folder for shared_run's runs."""
    _SHARED["root"] = tmp_path_factory.mktemp("shared-runs")


def shared_run(dataset, config):
    """train_and_export(dataset, <a session folder>, config), once per session for each dataset
    object and config: the modules that need the same small run train and export it once.
    Returns (run folder, TrainResult), the same objects to every caller: read them, never write
    into the run folder (copy it first)."""
    key = (id(dataset), json.dumps(asdict(config), sort_keys=True, default=str))
    if key not in _SHARED["runs"]:
        out = _SHARED["root"] / f"run-{len(_SHARED['runs'])}-{config.model}"
        # The dataset is kept with its run so that its id is never reused by another object.
        _SHARED["runs"][key] = (dataset, *train_and_export(dataset, out, config))
    return _SHARED["runs"][key][1:]


def snapshot(folder: Path) -> dict:
    """Every file under `folder`, relative path -> bytes: to show a refused build changed nothing."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def corrupt_run_copy(run, dest):
    """A run folder with the real config but damaged weights (for the bad-input tests)."""
    dest.mkdir()
    (dest / "config.json").write_text((run / "config.json").read_text())
    (dest / "weights.safetensors").write_bytes(b"\x00 not weights")
    return dest


# The servers these helpers build refuse cold starts (an unknown user: the 400 the error tests
# check); tests/server/test_served_rules.py serves the popularity cold start, a build's default.
TESTS_COLD_START = "refuse"


def build_repository(dataset, root, config=None, tuning=None, cold_start=TESTS_COLD_START):
    """A small user-based model trained briefly and exported in fp32 (the session's shared run),
    or `config` trained into root / "run"; then a repository at root / "repo" (pipeline as
    `tuning` says; default the ensemble): (run, repo, result)."""
    from builder.repository import write_repository
    if config is None:
        run, result = shared_run(dataset, small_rater_config())
    else:
        run, result = train_and_export(dataset, root / "run", config)
    write_repository(run, root / "repo", ["onnx"], tuning, cold_start=cold_start)
    return run, root / "repo", result


def serve_small_model(dataset, root, tuning=None):
    """For a fixture: `yield from serve_small_model(u1, root)` yields a ready server."""
    from server.launcher import TritonServer
    _, repo, _ = build_repository(dataset, root, tuning=tuning)
    with TritonServer(repo, build_dir=root / "build") as s:
        yield s


@pytest.fixture(scope="session")
def small_model_server(u1, tmp_path_factory):
    """One server of serve_small_model on u1 (the ensemble pipeline) for every module that only
    sends it requests: started once, stopped at the end of the session."""
    yield from serve_small_model(u1, tmp_path_factory.mktemp("small-model"))


def train_and_export(dataset, out, config):
    """Train `config` on `dataset`, save the run at `out` and export it in fp32: (run, result)."""
    from builder.export import ExportConfig, export_run
    from builder.run_folder import save_run
    from builder.train import train
    result = train(config, dataset, progress=False)
    run = save_run(result, dataset, out)
    export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
    return run, result


def ranker_and_rater_runs(dataset):
    """The session's shared EASE ranker (closed form: a second) and small rater on `dataset`,
    exported: (ranker run, ranker result, rater run, rater result)."""
    from builder.config import TrainConfig
    return (*shared_run(dataset, TrainConfig(model="ease", device="cpu")), *shared_run(dataset, small_rater_config()))


def serve_ranker_and_rater(dataset, root):
    """For a fixture: a ready server whose `recommend` ranks by a top-N model (EASE, closed form:
    a second) and shows a small rating model's predictions beside each item."""
    from builder.repository import write_repository
    from server.launcher import TritonServer
    ranker, _, rater, _ = ranker_and_rater_runs(dataset)
    write_repository(ranker, root / "repo", ["onnx"], rating_run=rater, cold_start=TESTS_COLD_START)
    with TritonServer(root / "repo", build_dir=root / "build") as s:
        yield s


@pytest.fixture(scope="session")
def ranker_and_rater_server(u1, tmp_path_factory):
    """One server of serve_ranker_and_rater on u1 (the ensemble pipeline) for every module that
    only sends it requests: started once, stopped at the end of the session."""
    yield from serve_ranker_and_rater(u1, tmp_path_factory.mktemp("ranker-and-rater"))


SIX_MOVIES = str(FIXTURES / "six_movies" / "ratings.dat")


def six_movie_runs(six, root, rater_epochs: int = 3):
    """An EASE ranker and a small U-AutoRec rater trained on the six-movie catalogue
    (tests/fixtures/six_movies, `random` split), both exported: (ranker run, rater run)."""
    from builder.config import TrainConfig
    ranker, _ = train_and_export(six, root / "ranker", TrainConfig(model="ease", data=SIX_MOVIES, split="random",
                                                                   device="cpu"))
    rater, _ = train_and_export(six, root / "rater", TrainConfig(model="autorec-u", data=SIX_MOVIES, split="random",
                                                                 hidden=[8], epochs=rater_epochs, batch_size=8,
                                                                 device="cpu"))
    return ranker, rater
