"""Loaders on small files of each real format, the canonical splits, bad-input errors."""
import numpy as np
import pytest

from builder.data import (
    DataFormatError, load_csv, load_netflix, load_ratings_csv, load_ratings_dat,
    load_udata, split_canonical, split_per_user, split_random, split_temporal,
)
from builder.data.loaders import load_uitem_titles
from builder.data.splits import SplitError, holdout_entries, holdout_users


# ---- bundled MovieLens-100K -------------------------------------------------------------

def test_ml100k_counts_and_titles(ml100k):
    f = ml100k.frame
    assert len(f) == 100_000
    assert f["user"].nunique() == 943 and f["item"].nunique() == 1682
    assert f.iloc[0].tolist() == [196, 242, 3.0, 881250949]  # u.data's first line
    assert ml100k.titles[1] == "Toy Story (1995)"
    assert ml100k.scale == (1.0, 5.0)


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4", "u5"])
def test_canonical_u_splits_80k_20k(ml100k, name):
    train, test = split_canonical(ml100k, name)
    assert train.sum() == 80_000 and test.sum() == 20_000
    assert not (train & test).any()


def test_u1_test_is_first_20000_lines(ml100k):
    _, test = split_canonical(ml100k, "u1")
    assert test[:20_000].all() and not test[20_000:].any()


@pytest.mark.parametrize("name", ["ua", "ub"])
def test_ua_ub_ten_per_user(ml100k, name):
    train, test = split_canonical(ml100k, name)
    assert test.sum() == 9_430 and train.sum() == 90_570
    per_user = ml100k.frame[test].groupby("user").size()
    assert (per_user == 10).all() and len(per_user) == 943


def test_dataset_u1(u1):
    assert u1.train.shape == (943, 1682)
    assert u1.train.nnz == 80_000 and u1.test.nnz == 20_000
    # user 196's rating of item 242 is line 1 of u.data, hence in u1.test
    r, c = u1.user_index([196])[0], u1.item_index([242])[0]
    assert u1.test[r, c] == 3 and u1.train[r, c] == 0
    assert u1.user_index([99999])[0] == -1


def test_canonical_split_rejects_other_data(fixtures):
    with pytest.raises(SplitError, match="100,000 rows"):
        split_canonical(load_udata(fixtures / "u.data"), "u1")


# ---- the other real formats ---------------------------------------------------------------

def test_udata_with_titles_and_duplicate_policy(fixtures, caplog):
    r = load_udata(fixtures / "u.data", fixtures / "u.item")
    # (196, 302) appears once; no duplicates in this fixture
    assert len(r) == 5 and r.duplicates_dropped == 0
    assert r.titles[242] == "Kolya (1996)"


def test_ratings_dat(fixtures):
    r = load_ratings_dat(fixtures / "ratings.dat", fixtures / "movies.dat")
    assert r.frame[["user", "item"]].values.tolist() == [[1, 1193], [1, 661], [2, 1193]]
    assert r.frame["timestamp"].iloc[0] == 978300760
    assert r.titles[661].startswith("James and the Giant Peach")
    assert r.scale == (1.0, 5.0)


def test_ratings_csv_half_stars(fixtures):
    r = load_ratings_csv(fixtures / "ratings.csv", fixtures / "movies.csv")
    assert r.frame["rating"].tolist() == [5.0, 3.5, 4.5]
    assert r.titles[306].startswith("Three Colors: Red")
    assert r.scale == (0.5, 5.0)


def test_netflix_blocks(fixtures):
    from builder.data.loaders import load_netflix_titles
    r = load_netflix(fixtures / "combined_data_1.txt", fixtures / "movie_titles.csv")
    assert r.frame[["user", "item", "rating"]].values.tolist() == [
        [1488844, 1, 3], [822109, 1, 5], [1488844, 8, 4]]
    assert r.titles[8] == "What the #$*! Do We, Know!?"
    assert load_netflix_titles(fixtures / "movie_titles.csv")[1] == "Dinosaur Planet"
    assert r.frame["timestamp"].iloc[0] == 1125964800  # 2005-09-06 UTC


def test_generic_csv_column_mapping(fixtures):
    r = load_csv(fixtures / "generic.csv", user="who", item="what", rating="score")
    assert r.frame[["user", "item", "rating"]].values.tolist() == [[10, 100, 4], [11, 100, 2], [10, 101, 5]]


# ---- bad input: the error names the file and the line ---------------------------------------

def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


BAD_FILES = [
    ("ratings.dat", "1::10::5::1\n1::11::4::2\n2::10::7::3\n",
     lambda p: load_ratings_dat(p, scale=(1.0, 5.0)), r"ratings.dat line 3: rating 7 outside scale 1..5"),
    ("u.data", "1\t2\t3\t4\n1\tabc\t3\t4\n", load_udata, r"u.data line 2: non-numeric 'item' field 'abc'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.0,5\n1,3,,5\n", load_ratings_csv,
     r"ratings.csv line 3: missing 'rating' field"),
    ("ratings.csv", "userId,rating\n1,3.0\n", load_ratings_csv, r"line 1: header lacks column\(s\) \['movieId'\]"),
    ("u.data", "", load_udata, "empty file"),
    ("u.data", "1\t2\t3\t4\n1\t2.5\t3\t4\n", load_udata, r"u.data line 2: 'item' id '2.5' is not an integer"),
    ("u.item", "1|Toy Story (1995)|x\nfoo\n", load_uitem_titles, r"u.item line 2: expected 'id\|title\|...'"),
    ("combined_data_1.txt", "1488844,3,2005-09-06\n", load_netflix, r"line 1: expected a 'MovieID:' line first"),
]


@pytest.mark.parametrize("name,text,loader,message", BAD_FILES, ids=[m for *_, m in BAD_FILES])
def test_bad_file_names_file_and_line(tmp_path, name, text, loader, message):
    p = _write(tmp_path, name, text)
    with pytest.raises(DataFormatError, match=message):
        loader(p)


def test_duplicates_keep_latest_and_count(tmp_path, caplog):
    p = _write(tmp_path, "u.data", "1\t2\t3\t10\n1\t2\t5\t20\n2\t2\t4\t30\n")
    r = load_udata(p)
    assert r.duplicates_dropped == 1
    assert r.frame.values.tolist() == [[1, 2, 5.0, 20], [2, 2, 4.0, 30]]
    assert "1 duplicate" in caplog.text


def test_duplicates_error_policy_names_line(tmp_path):
    p = _write(tmp_path, "u.data", "1\t2\t3\t10\n1\t2\t5\t20\n")
    with pytest.raises(DataFormatError, match="u.data line 1: duplicate rating of user 1 for item 2"):
        load_udata(p, duplicates="error")


def test_missing_file():
    with pytest.raises(DataFormatError, match="file not found"):
        load_udata("/nonexistent/u.data")


# ---- other splits -------------------------------------------------------------------------

def test_random_split_seeded(ml100k):
    a = split_random(ml100k, 0.1, seed=3)[1]
    b = split_random(ml100k, 0.1, seed=3)[1]
    assert (a == b).all() and 9_500 < a.sum() < 10_500


def test_temporal_split(ml100k, caplog):
    train, test = split_temporal(ml100k, "1998-03-01")
    assert "test ratings of users or items unseen before 1998-03-01 excluded" in caplog.text
    ts = ml100k.frame["timestamp"].to_numpy()
    assert ts[train].max() < ts[test].min()
    assert set(ml100k.frame["user"][test]) <= set(ml100k.frame["user"][train])


def test_per_user_holdout(ml100k):
    train, test = split_per_user(ml100k, 0.2, seed=0)
    counts = ml100k.frame.groupby("user").size()
    held = ml100k.frame[test].groupby("user").size()
    assert (held == np.floor(counts[held.index] * 0.2).clip(lower=1)).all()


def test_holdout_users_hides_part_of_some_users_histories(u1):
    fit, val = holdout_users(u1.train, 0.3, seed=0)
    assert fit.nnz + val.nnz == u1.train.nnz and fit.multiply(val).nnz == 0
    assert abs((fit + val) - u1.train).sum() == 0
    before, hidden = np.diff(u1.train.indptr), np.diff(val.indptr)
    losing = hidden > 0
    assert 0.2 < losing.mean() < 0.3  # about 30% of users (a few draw a share near 0)
    share = hidden[losing] / before[losing]
    assert share.max() < 0.95 and 0.3 < share.mean() < 0.5  # shares drawn from [0, 0.8)


def test_holdout_entries_partitions(u1):
    a, b = holdout_entries(u1.train, 0.1, seed=0)
    assert a.nnz + b.nnz == u1.train.nnz
    assert a.multiply(b).nnz == 0
    assert abs((a + b) - u1.train).sum() == 0
