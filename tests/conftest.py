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
