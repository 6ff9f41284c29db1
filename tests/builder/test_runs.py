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


def test_results_skips_folders_that_are_not_finished_runs(ease, tmp_path):
    """`aerec results runs/*`: the finished run's row, one line for each other folder saying why
    it is skipped (a model repository, an interrupted train, a file), exit 0; none: exit 2."""
    from conftest import cli
    repo = tmp_path / "model_repository"
    (repo / "recommend").mkdir(parents=True)
    (repo / "recommend" / "config.pbtxt").write_text('name: "recommend"\n')
    interrupted = tmp_path / "deeprec"
    interrupted.mkdir()
    (interrupted / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "recs.csv").write_text("user_id,item_id\n")
    r = cli("results", repo, ease, interrupted, tmp_path / "recs.csv")
    assert r.returncode == 0, r.stderr
    recall = json.loads((ease / "metrics.json").read_text())["recall@10"]
    assert "ease" in r.stdout and f"{recall:.4f}" in r.stdout and str(ease) in r.stdout
    lines = r.stderr.splitlines()
    assert f"skipped {repo}: not a finished run folder (no metrics.json)" in lines
    assert any(x.startswith(f"skipped {interrupted}: ") and "--resume" in x for x in lines)
    assert f"skipped {tmp_path / 'recs.csv'}: not a folder" in lines
    none = cli("results", repo, interrupted)
    assert none.returncode == 2 and "none of the 2 folder(s)" in none.stderr and "ease" not in none.stdout
    assert f"skipped {repo}: not a finished run folder (no metrics.json)" in none.stderr
