"""`aerec repository` into a folder that already serves: a build that could not serve is refused
with a message naming the problem, and an interrupted or refused build leaves the repository as
it was (tests/server/test_repository_data.py covers changed data)."""
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.config import TrainConfig
from builder.data.sources import load_dataset
from builder.repository import RepositoryError, Tuning, write_repository
from cli.common import DEFAULT_REPOSITORY
from cli.serve import serve
from conftest import FIXTURES, shared_run, six_movie_runs, small_rater_config, snapshot, train_and_export

pytestmark = pytest.mark.slow

DATA = str(FIXTURES / "six_movies" / "ratings.dat")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(EASE ranker, U-AutoRec rater, I-AutoRec: item-based, its width the number of users)."""
    six = load_dataset(DATA, "random", 0)
    root = tmp_path_factory.mktemp("builds-runs")
    ranker, rater = six_movie_runs(six, root, rater_epochs=1)
    item_based, _ = train_and_export(six, root / "item_based", TrainConfig(
        model="autorec-i", data=DATA, split="random", hidden=[4], epochs=1, batch_size=8, device="cpu"))
    return ranker, rater, item_based


@pytest.fixture
def served(runs, tmp_path):
    ranker, rater, _ = runs
    repo = tmp_path / "model_repository"
    write_repository(ranker, repo, ["onnx"], rating_run=rater)
    return repo


def test_an_item_based_run_alone_cannot_replace_a_network_of_recommend(runs, served):
    before = snapshot(served)
    with pytest.raises(RepositoryError, match="item-based .*autorec-i.*another --out"):
        write_repository(runs[2], served, ["onnx"])
    assert snapshot(served) == before


def test_an_item_based_rater_is_named_as_such_not_as_another_catalogue(runs, tmp_path):
    ranker, _, item_based = runs
    with pytest.raises(RepositoryError, match="is item-based \\(autorec-i\\)"):
        write_repository(ranker, tmp_path / "repo", ["onnx"], rating_run=item_based)


def test_an_out_path_that_is_a_file_is_refused(runs, tmp_path):
    target = tmp_path / "repo"
    target.write_text("mine")
    with pytest.raises(RepositoryError, match="is a file, not a repository folder"):
        write_repository(runs[0], target, ["onnx"])
    assert target.read_text() == "mine"


def test_an_interrupt_between_the_swap_renames_puts_the_served_repository_back(runs, served, monkeypatch):
    """Ctrl-C after the served folder moved aside and before the new one moved in."""
    before = snapshot(served)
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == served and self.name.startswith(f".{served.name}-") and not self.name.endswith("-old"):
            raise KeyboardInterrupt
        return real_rename(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write_repository(runs[0], served, ["onnx"], rating_run=runs[1])
    assert snapshot(served) == before
    assert [p.name for p in served.parent.iterdir()] == [served.name]   # no temporary or -old folder


def test_every_build_adds_a_recommend_version_an_ensemble_reuses_only_its_own_empty_one(runs, served):
    ranker, rater, _ = runs
    assert sorted(p.name for p in (served / "recommend").iterdir() if p.name.isdigit()) == ["1"]
    fused = write_repository(ranker, served, ["onnx"], Tuning(pipeline="fused"), rating_run=rater)
    assert fused["models"]["recommend"] == 2 and (served / "recommend" / "2" / "model.py").is_file()
    again = write_repository(ranker, served, ["onnx"], rating_run=rater)
    assert again["models"]["recommend"] == 3 and not any((served / "recommend" / "3").iterdir())
    assert write_repository(ranker, served, ["onnx"], rating_run=rater)["models"]["recommend"] == 3


def test_a_default_build_writes_outside_the_committed_repository(runs, tmp_path):
    """`aerec repository RUN` with no --out writes runs/model_repository, never model_repository/
    (the committed configs and model.py files a build reads as templates), and `aerec serve`
    reads that same default."""
    ranker, _, _ = runs
    done = subprocess.run([sys.executable, "-m", "cli.main", "repository", str(ranker)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / DEFAULT_REPOSITORY / "recommend" / "config.pbtxt").is_file()
    assert not (tmp_path / "model_repository").exists()
    assert DEFAULT_REPOSITORY.parts[0] == "runs"   # git-ignored
    assert inspect.signature(serve).parameters["repository"].default.default == DEFAULT_REPOSITORY


def test_a_run_ranking_below_popularity_is_warned_of_where_it_orders_the_lists(u1, tmp_path, caplog):
    """A rater alone orders recommend's lists by its predicted ratings; where its test users'
    recall@10 is under the most-popular list's, the build says so and how to rank instead.
    A ranker above popularity, with that rater beside it, builds without the warning."""
    rater, rater_result = shared_run(u1, small_rater_config())
    assert rater_result.metrics["recall@10"] < rater_result.metrics["popularity_recall@10"]
    with caplog.at_level(logging.WARNING, logger="builder.repository"):
        write_repository(rater, tmp_path / "alone", ["onnx"])
    (warning,) = [r.getMessage() for r in caplog.records if "below the most popular" in r.getMessage()]
    assert f"recall@10 {rater_result.metrics['recall@10']:.4f} against popularity's" in warning
    assert f"aerec repository TOP_N_RUN --rating-model {rater}" in warning
    caplog.clear()
    ranker, ranker_result = shared_run(u1, TrainConfig(model="ease", device="cpu"))
    assert ranker_result.metrics["recall@10"] > ranker_result.metrics["popularity_recall@10"]
    with caplog.at_level(logging.WARNING, logger="builder.repository"):
        write_repository(ranker, tmp_path / "both", ["onnx"], rating_run=rater)
    assert not [r for r in caplog.records if "below the most popular" in r.getMessage()]


def test_a_variant_not_exported_names_the_export_to_run(u1, tmp_path):
    rater, _ = shared_run(u1, small_rater_config())   # exported in fp32 only
    with pytest.raises(RepositoryError, match=r"model_fp16.onnx missing: export it first \(aerec export .* "
                                              r"--precision fp16\); this run has onnx$"):
        write_repository(rater, tmp_path / "repo", ["onnx_fp16"])
    with pytest.raises(RepositoryError, match=r"unknown variant\(s\) \['nosuch'\]; the variants are onnx, onnx_fp16, "
                                              r"onnx_int8, each from its `aerec export --precision`"):
        write_repository(rater, tmp_path / "repo", ["nosuch"])
    assert not (tmp_path / "repo").exists()
