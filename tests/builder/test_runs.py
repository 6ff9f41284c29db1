"""The run folder holds the data set it was trained on: later stages read it back, not the ratings file."""
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.run_folder import DATASET_ARRAYS, RunDataError, load_run_dataset, save_run
from builder.train import train


@pytest.fixture()
def run(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "six_movies", data)
    config = TrainConfig(model="ease", data=str(data / "ratings.dat"), split="random", device="cpu")
    dataset = load_dataset(config.data, config.split, config.seed)
    return save_run(train(config, dataset, progress=False), dataset, tmp_path / "run"), dataset


def _assert_same(a, b):
    for part in ("train", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.shape == y.shape and x.dtype == y.dtype
        for field in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
    for ids in ("user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, ids), getattr(b, ids))
    assert (a.titles, tuple(a.scale), a.fingerprint, a.name) == (b.titles, tuple(b.scale), b.fingerprint, b.name)


def test_run_folder_round_trips_its_dataset(run):
    folder, dataset = run
    assert np.load(folder / "item_ids.npy", allow_pickle=False).dtype == np.int64
    assert json.loads((folder / "titles.json").read_text()) == dataset.titles
    _assert_same(load_run_dataset(folder), dataset)


def test_run_dataset_is_read_from_the_folder_not_the_data_path(run, tmp_path):
    folder, dataset = run
    (tmp_path / "data" / "ratings.dat").unlink()
    _assert_same(load_run_dataset(folder), dataset)


def test_older_run_folder_reloads_its_data_path(run):
    folder, dataset = run
    for name in DATASET_ARRAYS:
        (folder / f"{name}.npy").unlink()
    (folder / "titles.json").unlink()
    _assert_same(load_run_dataset(folder), dataset)


def test_partial_run_dataset_is_refused_naming_the_folder(run):
    folder, _ = run
    (folder / "train_data.npy").unlink()
    with pytest.raises(RunDataError, match="train_data.npy") as e:
        load_run_dataset(folder)
    assert str(folder) in str(e.value)
