"""builder.repository's blocklist: `aerec blocklist` edits the repository's list, checked against
the served ids, and copies it into the folders of the models that read it (preprocess, a fused
`recommend`, `similar`), where a change makes Triton reload them."""
import shutil

import numpy as np
import pytest

from builder.repository import TEMPLATES, RepositoryError, sync_blocklist, update_blocklist
from serving.blocklist import load_blocklist


@pytest.fixture
def repo(tmp_path):
    """A built repository's layout as far as the blocklist reads it: the ensemble's configs and
    the preprocess version's served ids (items 1..20)."""
    for name, template in (("preprocess", "preprocess"), ("recommend", "recommend"), ("similar", "similar"),
                           ("postprocess", "postprocess")):
        (tmp_path / name / "1").mkdir(parents=True)
        shutil.copy(TEMPLATES / f"{template}.pbtxt", tmp_path / name / "config.pbtxt")
    np.save(tmp_path / "preprocess" / "1" / "item_ids.npy", np.arange(1, 21, dtype=np.int64))
    return tmp_path


def test_add_and_remove_reach_the_ranking_models_folders(repo):
    assert update_blocklist(repo, add=["5", "12", "7"]) == ["5", "12", "7"]
    assert update_blocklist(repo, add=["9"], remove=["12"]) == ["5", "7", "9"]
    for name in ("preprocess", "similar"):
        assert load_blocklist(repo / name) == ["5", "7", "9"]
    # The ensemble and postprocess read no blocklist: no copy to make Triton reload them.
    assert not (repo / "recommend" / "blocklist.txt").exists() and not (repo / "postprocess" / "blocklist.txt").exists()
    shutil.copy(TEMPLATES / "recommend_fused.pbtxt", repo / "recommend" / "config.pbtxt")
    sync_blocklist(repo)
    assert load_blocklist(repo / "recommend") == ["5", "7", "9"]
    assert update_blocklist(repo, remove=["5", "7", "9"]) == [] and load_blocklist(repo / "preprocess") == []


def test_an_id_the_catalogue_lacks_is_refused_and_nothing_written(repo):
    update_blocklist(repo, add=["3"])
    with pytest.raises(RepositoryError, match="item.s. 50 are not in the served catalogue"):
        update_blocklist(repo, add=["4", "50"])
    assert load_blocklist(repo) == ["3"] == load_blocklist(repo / "preprocess")


def test_a_folder_no_build_filled_is_refused(tmp_path):
    with pytest.raises(RepositoryError, match="no built repository"):
        update_blocklist(tmp_path, add=["1"])


def test_the_cli_edits_the_blocklist_and_names_a_bad_id(repo, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    ids = tmp_path / "ids.txt"
    ids.write_text("3\n\n4\n")
    ok = CliRunner().invoke(app, ["blocklist", str(repo), "--add", "5,6", "--file", str(ids), "--remove", "6"])
    assert ok.exit_code == 0, ok.output
    assert "3 blocked item(s): 5, 3, 4" in ok.output and load_blocklist(repo / "similar") == ["5", "3", "4"]
    bad = CliRunner().invoke(app, ["blocklist", str(repo), "--add", "77"])
    assert bad.exit_code == 2 and "77" in bad.output and load_blocklist(repo) == ["5", "3", "4"]
