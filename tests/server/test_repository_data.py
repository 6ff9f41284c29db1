"""`aerec repository` rebuilds item ids, titles and histories from the run's data path: data
that changed after training (tests/fixtures/six_movies -> six_movies_changed: movie 6 replaced
by a new movie 7) must be refused, not served under the trained columns."""
import shutil

import pytest

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.repository import RepositoryError, write_repository
from conftest import FIXTURES, train_and_export


def test_repository_refuses_data_changed_since_training(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "six_movies", data)
    config = TrainConfig(model="ease", data=str(data / "ratings.dat"), split="random", device="cpu")
    run, _ = train_and_export(load_dataset(config.data, config.split, config.seed), tmp_path / "run", config)
    repo = tmp_path / "repo"
    write_repository(run, repo, ["onnx"])  # the data as trained: accepted
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    for name in ("ratings.dat", "movies.dat"):
        shutil.copy2(FIXTURES / "six_movies_changed" / name, data / name)
    with pytest.raises(RepositoryError) as e:
        write_repository(run, repo, ["onnx"])
    assert "ab3d39fee424beb2" in str(e.value) and "be63f574535ce1a9" in str(e.value)
    assert str(data / "ratings.dat") in str(e.value)
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert not any(p.name.startswith(".repo-") for p in tmp_path.iterdir())
