"""`aerec repository` serves the item ids, titles and histories a run folder holds, so the data
file may change or go after training. A run folder from before runs held their data set falls
back to the run's data path: data that changed after training (tests/fixtures/six_movies ->
six_movies_changed: movie 6 replaced by a new movie 7) must be refused, not served under the
trained columns."""
import json
import shutil

import pytest

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.repository import RepositoryError, write_repository
from builder.run_folder import DATASET_ARRAYS
from conftest import FIXTURES, snapshot, train_and_export


def _ease_on_copied_data(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "six_movies", data)
    config = TrainConfig(model="ease", data=str(data / "ratings.dat"), split="random", device="cpu")
    dataset = load_dataset(config.data, config.split, config.seed)
    run, _ = train_and_export(dataset, tmp_path / "run", config)
    return data, run, dataset


def test_repository_builds_after_the_data_file_is_deleted(tmp_path):
    data, run, dataset = _ease_on_copied_data(tmp_path)
    (data / "ratings.dat").unlink()
    (data / "movies.dat").unlink()
    repo = tmp_path / "repo"
    write_repository(run, repo, ["onnx"])
    assets = json.loads((repo / "preprocess" / "1" / "assets.json").read_text())
    assert assets["dataset"]["fingerprint"] == dataset.fingerprint and assets["n_items"] == dataset.n_items


def test_older_run_folder_refuses_data_changed_since_training(tmp_path):
    data, run, _ = _ease_on_copied_data(tmp_path)
    for name in [f"{a}.npy" for a in DATASET_ARRAYS] + ["titles.json"]:  # as written before runs held their data
        (run / name).unlink()
    repo = tmp_path / "repo"
    write_repository(run, repo, ["onnx"])  # the data as trained: accepted
    before = snapshot(repo)
    for name in ("ratings.dat", "movies.dat"):
        shutil.copy2(FIXTURES / "six_movies_changed" / name, data / name)
    with pytest.raises(RepositoryError) as e:
        write_repository(run, repo, ["onnx"])
    assert "ab3d39fee424beb2" in str(e.value) and "be63f574535ce1a9" in str(e.value)
    assert str(data / "ratings.dat") in str(e.value)
    assert snapshot(repo) == before
    assert not any(p.name.startswith(".repo-") for p in tmp_path.iterdir())
