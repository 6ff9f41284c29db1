"""Loaders on small files of each real format, the canonical splits, bad-input errors."""
import numpy as np
import pytest

from builder.data import (
    DataFormatError, build_dataset, load_csv, load_netflix, load_ratings_csv, load_ratings_dat,
    load_udata, split_canonical, split_per_user, split_random, split_temporal,
)
from builder.data.loaders import (
    load_movies_csv_titles, load_movies_dat_titles, load_netflix_titles, load_uitem_titles,
)
from builder.data.ratings import infer_scale
from builder.data.sources import load_dataset, load_source
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
    assert ("of 22015 test rows from 1998-03-01 on, 220 of items first seen then (cold items) and 18080 of users "
            "first seen then were excluded") in caplog.text
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


# ---- the Netflix Prize as downloaded: many files, one data set ----------------------------

NETFLIX_TITLES = {1: "Dinosaur Planet", 2: "Isle of Man TT 2004 Review", 3: "Character",
                  4: "Paula Abdul's Get Up & Dance", 5: "The Rise and Fall of ECW",
                  6: "Sick, Sad, and Bored: A Comedy", 7: "Misérables, Les"}


@pytest.mark.parametrize("spec", [
    "netflix/download/training_set",          # the folder, titles one level above
    "netflix/download",                        # the folder above it
    "netflix/download/training_set/mv_*.txt",  # a glob
    "netflix/kaggle",                          # Kaggle: combined_data_*.txt, movie_titles.csv beside
    "netflix/kaggle/combined_data_*.txt",
])
def test_netflix_folder_or_glob_is_one_data_set(fixtures, spec):
    r = load_source(str(fixtures / spec))
    assert len(r) == 48 and sorted(r.frame["item"].unique()) == [1, 2, 3, 4, 5, 6]
    assert r.frame["user"].nunique() == 12
    assert r.titles == NETFLIX_TITLES  # Latin-1 .txt and UTF-8 .csv alike; commas; year NULL
    assert r.frame.iloc[0].tolist()[:3] == [2238063, 1, 1.0]  # mv_0000001.txt line 2


def test_netflix_dataset_from_folder_has_every_movie(fixtures):
    d = load_dataset(str(fixtures / "netflix/download/training_set"), "random")
    assert (d.n_users, d.n_items) == (12, 6) and d.train.nnz + d.test.nnz == 48
    assert d.titles[5] == "Sick, Sad, and Bored: A Comedy"


def test_one_mv_file_is_refused_not_a_one_item_model(fixtures):
    with pytest.raises(DataFormatError, match=r"mv_0000001.txt: the data holds only one item \(item 1\).*"
                                              r"its folder, or a glob such as '.*training_set/mv_\*.txt'"):
        load_dataset(str(fixtures / "netflix/download/training_set/mv_0000001.txt"), "random")


def test_one_user_csv_is_told_to_join_its_parts_not_to_glob(tmp_path):
    """Outside the Netflix Prize several files do not load as one, so the hint says to join them."""
    (tmp_path / "skus.csv").write_text("user,item\nu1,a\nu1,b\nu1,c\n")
    with pytest.raises(DataFormatError, match=r"only one user \(user u1\).*join the parts into one file first"):
        load_dataset(f"csv:{tmp_path / 'skus.csv'}", "random")


def test_one_user_is_refused(tmp_path):
    p = _write(tmp_path, "u.data", "7\t1\t3\t10\n7\t2\t4\t20\n7\t3\t5\t30\n")
    r = load_udata(p)
    with pytest.raises(DataFormatError, match=r"u.data: the data holds only one user \(user 7\)"):
        build_dataset(r, np.ones(3, bool), np.zeros(3, bool))
    with pytest.raises(DataFormatError, match="only one user"):
        load_dataset(str(p), "random")


def test_netflix_error_names_the_file_among_many(fixtures, tmp_path):
    for src in sorted((fixtures / "netflix/download/training_set").glob("mv_*.txt")):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    bad = tmp_path / "mv_0000004.txt"
    bad.write_text(bad.read_text().replace("2207774,4,", "2207774,9,"))
    with pytest.raises(DataFormatError, match=r"mv_0000004.txt line 3: rating 9 outside scale 1..5"):
        load_source(str(tmp_path))


def test_netflix_folder_with_both_kinds_is_refused(fixtures, tmp_path):
    one_mv = fixtures / "netflix/download/training_set/mv_0000001.txt"
    for src in [*(fixtures / "netflix/kaggle").glob("combined_*"), one_mv]:
        (tmp_path / src.name).write_bytes(src.read_bytes())
    with pytest.raises(DataFormatError, match=r"holds both 1 mv_\*.txt and 2 combined_data_\*.txt"):
        load_source(str(tmp_path))


@pytest.mark.parametrize("spec,message", [
    ("netflix/nothing_*.txt", "no file matches this pattern"),
    ("encodings/latin1", "folder holds no ratings file aerec knows"),
    ("*.data*", None),  # u.data only: one file, loads as u.data
])
def test_glob_and_folder_edges(fixtures, spec, message):
    if message is None:
        assert len(load_source(str(fixtures / spec))) == 5
    else:
        with pytest.raises(DataFormatError, match=message):
            load_source(str(fixtures / spec))


def test_several_files_only_for_netflix(fixtures):
    with pytest.raises(DataFormatError, match="several files load as one data set only for the Netflix"):
        load_source(str(fixtures / "ratings.*"))


def test_netflix_titles_format_is_checked(tmp_path):
    p = tmp_path / "movie_titles.txt"
    p.write_bytes(b"1,2003,Dinosaur Planet\n2,Isle of Man\n")
    with pytest.raises(DataFormatError, match=r"movie_titles.txt line 2: expected 'MovieID,Year,Title'"):
        load_netflix_titles(p)


# ---- text encodings: byte-order marks, UTF-8 or Latin-1, CRLF -------------------------------

def test_excel_csv_utf8_with_bom_and_crlf(fixtures):
    r = load_source(str(fixtures / "excel/ratings.csv"))  # movies.csv beside it: also BOM + CRLF
    assert len(r) == 20 and r.frame.iloc[0].tolist() == [1, 1, 2.0, 1420000101]
    assert r.titles == {1: "American President, The (1995)", 2: "Heat (1995)",
                        3: "Misérables, Les (1995)", 4: "Sabrina (1995)"}


TITLE_FILES = [
    (load_uitem_titles, "u.item", "Misérables, Les (1995)"),
    (load_movies_dat_titles, "movies.dat", "Misérables, Les (1995)"),
    (load_movies_csv_titles, "movies.csv", "Misérables, Les (1995)"),
    (load_netflix_titles, "movie_titles.txt", "Misérables, Les"),
]


@pytest.mark.parametrize("encoding", ["latin1", "utf8", "utf8-bom-crlf"])
@pytest.mark.parametrize("loader,name,title", TITLE_FILES, ids=[n for _, n, _ in TITLE_FILES])
def test_titles_in_any_encoding(fixtures, tmp_path, loader, name, title, encoding):
    if encoding == "utf8-bom-crlf":  # the UTF-8 fixture as Excel/Notepad re-save it
        text = (fixtures / "encodings/utf8" / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
    else:
        path = fixtures / "encodings" / encoding / name
    titles = loader(path)
    assert titles[3] == title and titles[1].startswith("Toy Story")


RATINGS_FILES = [
    ("u.data", load_udata),
    ("ratings.dat", load_ratings_dat),
    ("ratings.csv", load_ratings_csv),
    ("combined_data_1.txt", load_netflix),
    ("generic.csv", lambda p: load_csv(p, user="who", item="what", rating="score")),
]


def _resave(src, dest, bom=b"", newline=b"\n", codec="utf-8", last=b""):
    text = src.read_bytes().decode("utf-8").encode(codec)
    dest.write_bytes(bom + text.replace(b"\n", newline) + last)
    return dest


@pytest.mark.parametrize("variant", [
    dict(bom=b"\xef\xbb\xbf"),
    dict(bom=b"\xef\xbb\xbf", newline=b"\r\n"),
    dict(newline=b"\r\n"),
    dict(codec="utf-16"),  # Excel's "Unicode text": its own mark
    dict(last=b"   \n"),   # a last line of spaces
    dict(last=b" \t \r\n\t\n", newline=b"\r\n"),
], ids=["bom", "bom-crlf", "crlf", "utf16", "spaces-line", "tabs-lines-crlf"])
@pytest.mark.parametrize("name,loader", RATINGS_FILES, ids=[n for n, _ in RATINGS_FILES])
def test_ratings_files_as_users_resave_them(fixtures, tmp_path, name, loader, variant):
    want = loader(fixtures / name).frame
    got = loader(_resave(fixtures / name, tmp_path / name, **variant)).frame
    assert got.equals(want)


def test_bom_that_lies_is_named(tmp_path):
    p = tmp_path / "u.data"
    p.write_bytes(b"\xef\xbb\xbf1\t2\t3\t4\n1\t\xe93\t3\t4\n")  # a UTF-8 mark, then Latin-1
    with pytest.raises(DataFormatError, match="u.data: starts with a UTF-8 byte-order mark but is not valid UTF-8"):
        load_udata(p)


@pytest.mark.parametrize("uri", [False, True])
def test_classic_mac_line_ends_and_binary_files_are_named_not_a_traceback(tmp_path, uri):
    """A CSV saved with CR-only line ends (Excel's "CSV (Macintosh)") reads as one long line
    that Python's csv module refuses with "new-line character seen in unquoted field"; a binary
    file given as a CSV likewise. Both, as a plain path or a csv: URI, are named."""
    cr = tmp_path / "mac.csv"
    cr.write_bytes(b"user,item,rating\r1,10,5\r2,10,4\r2,11,3\r")
    binary = tmp_path / "photo.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    spec = (lambda p: f"csv:{p}") if uri else str
    with pytest.raises(DataFormatError, match=r"mac.csv: its lines end in a carriage return alone .*LF or CRLF"):
        load_source(spec(cr))
    with pytest.raises(DataFormatError, match=r"photo.csv: line 1 is not text"):
        load_source(spec(binary))


@pytest.mark.parametrize("spec,message", [
    ("xls:ratings.xls", r"unknown format 'xls'; name the file as csv:PATH, tsv:PATH or parquet:PATH"),
    ("https://example.com/ratings.csv", r"aerec reads local files: download it first"),
    ("ml-1m", r"only ml-100k is bundled; download ml-1m from https://grouplens.org/datasets/movielens/"),
])
def test_a_data_word_aerec_cannot_read_says_what_it_can(spec, message):
    with pytest.raises(DataFormatError, match=message):
        load_source(spec)


def test_whitespace_line_mid_file_keeps_line_numbers(tmp_path):
    p = _write(tmp_path, "ratings.dat", "1::10::5::1\n  \n1::11::4::2\n2::10::7::3\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat line 4: rating 7 outside scale 1..5"):
        load_ratings_dat(p)


# ---- a generic CSV's rating scale -------------------------------------------------------------

def test_csv_scale_read_from_data_and_stated(fixtures, caplog):
    r = load_source(f"csv:{fixtures / 'scale10.csv'}")  # ratings 2..9
    assert r.scale == (1.0, 10.0) and r.frame["rating"].max() == 9
    assert "rating scale 1..10 read from the data (ratings span 2..9)" in caplog.text


def test_csv_of_one_rating_value_is_told_it_may_be_a_log(tmp_path, caplog):
    """A file whose every rating is 1 (clicks saved as ratings) has no scale to read: the warning
    says so and names the interaction-log reading instead."""
    p = tmp_path / "clicks.csv"
    p.write_text("user,item,rating\n1,10,1\n1,11,1\n2,10,1\n")
    r = load_source(f"csv:{p}")
    assert r.scale == (1.0, 5.0)
    assert "every rating is 1, so rating scale 1..5 is assumed" in caplog.text
    assert "csv:PATH?weight=COLUMN" in caplog.text and "read from the data" not in caplog.text


@pytest.mark.parametrize("ratings,scale", [
    ([1, 4], (1.0, 5.0)), ([2, 5], (1.0, 5.0)), ([0.5, 4.5], (0.5, 5.0)), ([1, 9], (1.0, 10.0)),
    ([0.5, 10], (0.5, 10.0)), ([3.5, 10], (1.0, 10.0)), ([1, 42], (1.0, 100.0)), ([-10, 10], (-10.0, 10.0)),
])
def test_infer_scale(ratings, scale):
    assert infer_scale(np.array(ratings)) == scale


def test_csv_scale_from_spec(fixtures):
    assert load_source(f"csv:{fixtures / 'scale10.csv'}?scale=0.5:10").scale == (0.5, 10.0)
    with pytest.raises(DataFormatError, match=r"scale10.csv line 3: rating 9 outside scale 1..5"):
        load_source(f"csv:{fixtures / 'scale10.csv'}?scale=1:5")


@pytest.mark.parametrize("query,message", [
    ("scale=0:10", r"scale '0:10' .* expected LOW:HIGH with 0 < LOW < HIGH"),
    ("scale=ten", r"scale 'ten' .* expected LOW:HIGH"),
    ("sep=;", r"unknown option 'sep' .* options are user=COL, item=COL, .* scale=LOW:HIGH"),
])
def test_csv_spec_errors(fixtures, query, message):
    with pytest.raises(DataFormatError, match=message):
        load_source(f"csv:{fixtures / 'scale10.csv'}?{query}")


def test_zero_rating_is_refused_with_a_way_forward(tmp_path):
    p = _write(tmp_path, "zero.csv", "user,item,rating\n1,1,0\n2,1,10\n1,2,5\n")
    with pytest.raises(DataFormatError, match=r"zero.csv line 2: rating 0: ratings must be above 0.*add 1"):
        load_source(f"csv:{p}")
