"""serving/blocklist.py: the file written atomically and read back, ids mapped to columns, and
the blocklist applied by request parsing (an always-on exclude) without a server."""
import numpy as np

from serving.blocklist import BLOCKLIST_FILE, blocked_columns, load_blocklist, save_blocklist
from serving.contract import USER_ID
from serving.requests import Catalogue, prepare

IDS = np.arange(10, 121, 10, dtype=np.int64)
CAT = Catalogue(item_ids=IDS, user_ids=np.array([1, 2], np.int64), indptr=np.array([0, 1, 2], np.int64),
                indices=np.array([0, 11], np.int64), data=np.array([5, 4], np.float32), low=1.0, high=5.0)


def test_save_then_load_keeps_order_and_drops_repeats(tmp_path):
    assert load_blocklist(tmp_path) == []
    save_blocklist(tmp_path, ["50", "12", "50", " 7 "])
    assert load_blocklist(tmp_path) == ["50", "12", "7"]
    assert (tmp_path / BLOCKLIST_FILE).read_text() == "50\n12\n7\n"
    assert [p.name for p in tmp_path.iterdir()] == [BLOCKLIST_FILE]   # no temporary file left
    (tmp_path / BLOCKLIST_FILE).write_text("# withdrawn\n\n30\n")
    assert load_blocklist(tmp_path) == ["30"]


def test_blocked_columns_skip_ids_the_catalogue_lacks():
    assert blocked_columns(["120", "15", "10", "x"], IDS).tolist() == [0, 11]
    assert blocked_columns(["b", "q"], np.array(["a", "b", "c"])).tolist() == [1]
    assert blocked_columns([], IDS).tolist() == []


def test_a_catalogue_with_a_blocklist_blocks_those_items_on_every_row(tmp_path):
    save_blocklist(tmp_path, ["20", "40", "999"])
    cat = CAT.with_blocklist(tmp_path)
    assert cat.blocklist.tolist() == [1, 3]
    batch = prepare([{USER_ID: np.array([[1], [2]], np.int64)}], cat)
    assert batch.blocked[:, [1, 3]].all() and batch.blocked.sum() == 4
    assert CAT.with_blocklist(tmp_path / "none") is CAT   # no blocklist: the catalogue as it was
