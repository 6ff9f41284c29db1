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


def corrupt_run_copy(run, dest):
    """A run folder with the real config but damaged weights (for the bad-input tests)."""
    dest.mkdir()
    (dest / "config.json").write_text((run / "config.json").read_text())
    (dest / "weights.safetensors").write_bytes(b"\x00 not weights")
    return dest


def build_repository(dataset, root, config=None):
    """Train a small user-based model briefly, export fp32, write a repository: (run, repo, result)."""
    from builder.config import TrainConfig
    from builder.export import ExportConfig, export_run
    from builder.repository import write_repository
    from builder.train import save_run, train
    config = config or TrainConfig(model="sae", hidden=[16, 8], epochs=2, batch_size=64, device="cpu")
    result = train(config, dataset, progress=False)
    run = save_run(result, dataset, root / "run")
    export_run(run, ExportConfig(precisions=["fp32"]), bench_seconds=0.05)
    write_repository(run, root / "repo", ["onnx"])
    return run, root / "repo", result


def serve_small_model(dataset, root):
    """For a fixture: `yield from serve_small_model(u1, root)` yields a ready server."""
    from server.launcher import TritonServer
    _, repo, _ = build_repository(dataset, root)
    with TritonServer(repo, build_dir=root / "build") as s:
        yield s
