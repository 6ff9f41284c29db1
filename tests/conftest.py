from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(2)


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
    """Train a small user-based model briefly, export fp32, write a repository (pipeline as
    `tuning` says; default the ensemble): (run, repo, result)."""
    from builder.config import TrainConfig
    from builder.export import ExportConfig, export_run
    from builder.repository import write_repository
    from builder.run_folder import save_run
    from builder.train import train
    config = config or TrainConfig(model="sae", hidden=[16, 8], epochs=2, batch_size=64, device="cpu")
    result = train(config, dataset, progress=False)
    run = save_run(result, dataset, root / "run")
    export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
    write_repository(run, root / "repo", ["onnx"], tuning, cold_start=cold_start)
    return run, root / "repo", result


def serve_small_model(dataset, root, tuning=None):
    """For a fixture: `yield from serve_small_model(u1, root)` yields a ready server."""
    from server.launcher import TritonServer
    _, repo, _ = build_repository(dataset, root, tuning=tuning)
    with TritonServer(repo, build_dir=root / "build") as s:
        yield s


def train_and_export(dataset, out, config):
    """Train `config` on `dataset`, save the run at `out` and export it in fp32: (run, result)."""
    from builder.export import ExportConfig, export_run
    from builder.run_folder import save_run
    from builder.train import train
    result = train(config, dataset, progress=False)
    run = save_run(result, dataset, out)
    export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
    return run, result


def serve_ranker_and_rater(dataset, root):
    """For a fixture: a ready server whose `recommend` ranks by a top-N model (EASE, closed form:
    a second) and shows a small rating model's predictions beside each item."""
    from builder.config import TrainConfig
    from builder.repository import write_repository
    from server.launcher import TritonServer
    ranker, _ = train_and_export(dataset, root / "ranker", TrainConfig(model="ease", device="cpu"))
    rater, _ = train_and_export(dataset, root / "rater", TrainConfig(model="sae", hidden=[16, 8], epochs=2,
                                                                     batch_size=64, device="cpu"))
    write_repository(ranker, root / "repo", ["onnx"], rating_run=rater, cold_start=TESTS_COLD_START)
    with TritonServer(root / "repo", build_dir=root / "build") as s:
        yield s


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
