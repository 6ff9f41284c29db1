"""Request parsing and validation without a server: every bad request of
tests/reliability/test_bad_inputs.py that our code (not Triton's own checks) refuses gets the
same message here, and valid requests become the dense rows the networks read."""
import dataclasses

import numpy as np
import pytest

from serving.contract import DEFAULT_TOP_K, ITEM_IDS, MAX_ITEMS_PER_REQUEST, PAD, RATINGS, TOP_K, USER_ID
from serving.requests import Catalogue, RequestError, parse_request, prepare

# Items 10, 20, ..., 120 (12 columns); users 1, 2, 3: user 1 rated items 10 (5) and 30 (3),
# user 2 item 120 (4), user 3 nothing (all their ratings fell in the test part). Scale 1..5.
CAT = Catalogue(item_ids=np.arange(10, 121, 10, dtype=np.int64), user_ids=np.array([1, 2, 3], np.int64),
                indptr=np.array([0, 2, 3, 3], np.int64), indices=np.array([0, 2, 11], np.int64),
                data=np.array([5, 3, 4], np.float32), low=1.0, high=5.0)


def i64(*v):
    return np.array([v], np.int64)


def f32(*v):
    return np.array([v], np.float32)


def k(n):
    return np.array([[n]], np.int32)


BAD = [
    ("unknown user", {USER_ID: i64(999_999), TOP_K: k(10)}, "unknown USER_ID 999999"),
    ("unknown user with items", {USER_ID: i64(7), ITEM_IDS: i64(10), RATINGS: f32(4), TOP_K: k(3)},
     "unknown USER_ID 7"),
    ("user with no history", {USER_ID: i64(3), TOP_K: k(5)},
     "user 3 has no ratings in the training data: send ITEM_IDS with RATINGS"),
    ("length mismatch", {ITEM_IDS: i64(10, 20, 30), RATINGS: f32(4, 5), TOP_K: k(10)},
     "ITEM_IDS has 3 entries but RATINGS has 2"),
    ("NaN rating", {ITEM_IDS: i64(10, 20), RATINGS: f32(4, np.nan), TOP_K: k(10)}, "NaN or infinity"),
    ("inf rating", {ITEM_IDS: i64(10, 20), RATINGS: f32(4, np.inf), TOP_K: k(10)}, "NaN or infinity"),
    ("rating above scale", {ITEM_IDS: i64(10, 20), RATINGS: f32(4, 9), TOP_K: k(10)}, "rating 9 outside scale 1..5"),
    ("negative rating", {ITEM_IDS: i64(10), RATINGS: f32(-1), TOP_K: k(10)}, "rating -1 outside scale 1..5"),
    ("TOP_K zero", {USER_ID: i64(1), TOP_K: k(0)}, "TOP_K must be in 1..12, got 0"),
    ("TOP_K negative", {USER_ID: i64(1), TOP_K: k(-5)}, "TOP_K must be in 1..12, got -5"),
    ("TOP_K huge", {USER_ID: i64(1), TOP_K: k(2**31 - 1)}, "TOP_K must be in 1..12, got 2147483647"),
    ("empty lists", {ITEM_IDS: np.zeros((1, 0), np.int64), RATINGS: np.zeros((1, 0), np.float32), TOP_K: k(10)},
     "empty request"),
    ("nothing at all", {}, "empty request"),
    ("only padding", {ITEM_IDS: i64(PAD, PAD), RATINGS: f32(4, 0), TOP_K: k(3)},
     "held only padding (item -1 or rating 0, which means 'not rated'): send ratings within 1..5"),
    ("a rating of 0", {ITEM_IDS: i64(50), RATINGS: f32(0), TOP_K: k(3)}, "rating 0, which means 'not rated'"),
    ("no known item", {ITEM_IDS: i64(999_998), RATINGS: f32(4), TOP_K: k(10)}, "no known items"),
    ("duplicate item ids", {ITEM_IDS: i64(50, 70, 50), RATINGS: f32(5, 4, 3), TOP_K: k(10)},
     "ITEM_IDS repeats item 50: send each item once"),
    ("too many items", {ITEM_IDS: np.arange(1, MAX_ITEMS_PER_REQUEST + 2, dtype=np.int64)[None],
                        RATINGS: np.full((1, MAX_ITEMS_PER_REQUEST + 1), 3, np.float32), TOP_K: k(10)},
     f"{MAX_ITEMS_PER_REQUEST + 1} ratings in one request; the limit is {MAX_ITEMS_PER_REQUEST}"),
    ("ratings without items", {RATINGS: f32(4, 5), TOP_K: k(10)}, "RATINGS sent without ITEM_IDS (2 ratings"),
    ("TOP_K not one per row", {USER_ID: i64(1), TOP_K: np.array([[5, 6]], np.int32)},
     "TOP_K must be one integer per row"),
    ("mixed TOP_K", {USER_ID: np.array([[1], [2]], np.int64), TOP_K: np.array([[5], [6]], np.int32)},
     "TOP_K differs across the rows of one request"),
    ("rows disagree", {USER_ID: np.array([[1], [2]], np.int64), TOP_K: k(5)}, "USER_ID has 2 rows but TOP_K has 1"),
    # The user is checked before the ratings, the ratings before TOP_K: the first real problem is named.
    ("user before TOP_K", {USER_ID: i64(999), TOP_K: k(0)}, "unknown USER_ID 999"),
    ("ratings before TOP_K", {ITEM_IDS: i64(10), RATINGS: f32(9), TOP_K: k(0)}, "outside scale"),
]


@pytest.mark.parametrize("name,tensors,message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_refused_with_its_reason(name, tensors, message):
    with pytest.raises(RequestError) as e:
        parse_request(tensors, CAT)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_known_user_gets_their_history():
    (row,) = parse_request({USER_ID: i64(1), TOP_K: k(4)}, CAT)
    assert row.user_row == 0 and row.k == 4 and row.cols.size == 0
    batch = prepare([{USER_ID: i64(1), TOP_K: k(4)}], CAT)
    expected = np.zeros(12, np.float32)
    expected[[0, 2]] = [5, 3]
    assert batch.errors == {} and batch.spans == [(0, 0, 1)]
    np.testing.assert_array_equal(batch.dense[0], expected)
    assert batch.top_k.tolist() == [[4]] and batch.unknown.tolist() == [[0]]


def test_sent_ratings_override_the_history_and_unknown_items_are_counted():
    batch = prepare([{USER_ID: i64(1), ITEM_IDS: i64(10, 40, 555), RATINGS: f32(1, 2, 3), TOP_K: k(3)}], CAT)
    expected = np.zeros(12, np.float32)
    expected[[0, 2, 3]] = [1, 3, 2]     # item 10 now 1 (was 5), item 30 kept from the history
    np.testing.assert_array_equal(batch.dense[0], expected)
    assert batch.unknown.tolist() == [[1]]


def test_default_top_k_is_ten_capped_at_the_catalogue():
    (row,) = parse_request({ITEM_IDS: i64(10), RATINGS: f32(4)}, CAT)
    assert row.k == DEFAULT_TOP_K
    small = Catalogue(CAT.item_ids[:3], CAT.user_ids, CAT.indptr, np.array([0, 2, 1]), CAT.data, 1.0, 5.0)
    (row,) = parse_request({ITEM_IDS: i64(10), RATINGS: f32(4)}, small)
    assert row.k == 3


def test_several_new_users_padded_into_one_request():
    items = np.array([[10, 20, 30], [40, PAD, PAD]], np.int64)
    ratings = np.array([[5, 4, 3], [2, 0, 0]], np.float32)
    batch = prepare([{ITEM_IDS: items, RATINGS: ratings, TOP_K: np.array([[2], [2]], np.int32)}], CAT)
    assert batch.spans == [(0, 0, 2)] and batch.dense.shape == (2, 12)
    assert batch.dense[0, :3].tolist() == [5, 4, 3] and batch.dense[1].nonzero()[0].tolist() == [3]


def test_a_bad_request_never_fails_its_batch_mates():
    good = {USER_ID: i64(2), TOP_K: k(3)}
    batch = prepare([good, {USER_ID: i64(999), TOP_K: k(3)}, good], CAT)
    assert batch.errors == {1: "unknown USER_ID 999"}
    assert batch.spans == [(0, 0, 1), (2, 1, 2)] and batch.dense.shape == (2, 12)
    assert batch.dense[:, 11].tolist() == [4, 4]


def test_ids_only_rows_are_looked_up_together():
    rows = parse_request({USER_ID: np.array([[2], [1]], np.int64), TOP_K: np.array([[3], [3]], np.int32)}, CAT)
    assert [r.user_row for r in rows] == [1, 0]


def test_items_without_ratings_count_as_rated_at_the_scales_top():
    """RATINGS left out: every sent item is in the history at the scale's top (5 here)."""
    batch = prepare([{ITEM_IDS: i64(10, 40, 555), TOP_K: k(3)}, {USER_ID: i64(1), ITEM_IDS: i64(30), TOP_K: k(3)}],
                    CAT)
    assert batch.errors == {} and batch.unknown.tolist() == [[1], [0]]
    assert batch.dense[0].nonzero()[0].tolist() == [0, 3] and batch.dense[0, [0, 3]].tolist() == [5, 5]
    assert batch.dense[1, [0, 2]].tolist() == [5, 5]   # user 1's item 30 (3 in the history) now 5


# ---- string ids: the same catalogue with users u1, u2, u3 and items sku-010 ... sku-120 ----------
# (zero-padded so that their sorted order is the integer catalogue's: the same columns)
SCAT = Catalogue(item_ids=np.array([f"sku-{i:03d}" for i in range(10, 121, 10)]), user_ids=np.array(["u1", "u2", "u3"]),
                 indptr=CAT.indptr, indices=CAT.indices, data=CAT.data, low=1.0, high=5.0)


def b(*v):
    """A BYTES tensor [1, n] as Triton hands it to a Python model: an object array of bytes."""
    return np.array([[x.encode() if isinstance(x, str) else x for x in v]], np.object_)


STRING_BAD = [
    ("unknown user", {USER_ID: b("u9"), TOP_K: k(3)}, "unknown USER_ID 'u9'"),
    ("empty user", {USER_ID: b(""), TOP_K: k(3)}, "USER_ID is empty"),
    ("user not UTF-8", {USER_ID: b(b"u\xff"), TOP_K: k(3)}, "USER_ID holds b'u\\xff', which is not UTF-8"),
    ("user with a NUL", {USER_ID: b("u1\x00"), TOP_K: k(3)}, "with a NUL character"),
    ("user with no history", {USER_ID: b("u3"), TOP_K: k(3)}, "user 'u3' has no ratings in the training data"),
    ("item not UTF-8", {ITEM_IDS: b("sku-010", b"\xc3\x28"), TOP_K: k(3)},
     "ITEM_IDS holds b'\\xc3(', which is not UTF-8"),
    ("integer user ids", {USER_ID: i64(1), TOP_K: k(3)}, "USER_ID must be strings for this model"),
    ("integer item ids", {ITEM_IDS: i64(10), RATINGS: f32(4), TOP_K: k(3)}, "ITEM_IDS must be strings"),
    ("only padding", {ITEM_IDS: b("", ""), TOP_K: k(3)}, "held only padding (item '' or rating 0"),
    ("repeated item", {ITEM_IDS: b("sku-010", "sku-010"), TOP_K: k(3)}, "ITEM_IDS repeats item 'sku-010'"),
    ("no known item", {ITEM_IDS: b("sku-999"), TOP_K: k(3)}, "no known items"),
    ("too many items", {ITEM_IDS: np.array([[f"x{i}".encode() for i in range(MAX_ITEMS_PER_REQUEST + 1)]], np.object_),
                        TOP_K: k(3)}, f"{MAX_ITEMS_PER_REQUEST + 1} ratings in one request; the limit is"),
]


@pytest.mark.parametrize("name,tensors,message", STRING_BAD, ids=[c[0] for c in STRING_BAD])
def test_bad_string_request_is_refused_with_its_reason(name, tensors, message):
    with pytest.raises(RequestError) as e:
        parse_request(tensors, SCAT)
    assert message in str(e.value)


def test_string_ids_in_an_integer_catalogue_are_refused():
    with pytest.raises(RequestError, match="USER_ID must be integers for this model"):
        parse_request({USER_ID: b("1"), TOP_K: k(3)}, CAT)


def test_string_requests_densify_as_the_integer_ones():
    """Each request in string ids gives the very rows its integer twin gives."""
    pairs = [({USER_ID: b("u1"), TOP_K: k(4)}, {USER_ID: i64(1), TOP_K: k(4)}),
             ({USER_ID: b("u1"), ITEM_IDS: b("sku-010", "sku-040", "sku-555"), RATINGS: f32(1, 2, 3), TOP_K: k(3)},
              {USER_ID: i64(1), ITEM_IDS: i64(10, 40, 555), RATINGS: f32(1, 2, 3), TOP_K: k(3)}),
             ({ITEM_IDS: b("sku-030", "sku-120"), TOP_K: k(3)}, {ITEM_IDS: i64(30, 120), TOP_K: k(3)}),
             # two new users, the shorter row padded with b"" (and with -1 in integers)
             ({ITEM_IDS: np.array([[b"sku-010", b"sku-020"], [b"sku-040", b""]], np.object_),
               RATINGS: np.array([[5, 4], [2, 0]], np.float32), TOP_K: np.array([[2], [2]], np.int32)},
              {ITEM_IDS: np.array([[10, 20], [40, PAD]], np.int64), RATINGS: np.array([[5, 4], [2, 0]], np.float32),
               TOP_K: np.array([[2], [2]], np.int32)}),
             ({USER_ID: np.array([[b"u2"], [b"u1"]], np.object_), TOP_K: np.array([[3], [3]], np.int32)},
              {USER_ID: np.array([[2], [1]], np.int64), TOP_K: np.array([[3], [3]], np.int32)})]
    for strings, ints in pairs:
        got, want = prepare([strings], SCAT), prepare([ints], CAT)
        assert got.errors == want.errors == {}
        np.testing.assert_array_equal(got.dense, want.dense)
        assert got.unknown.tolist() == want.unknown.tolist() and got.top_k.tolist() == want.top_k.tolist()


def test_a_bad_string_request_never_fails_its_batch_mates():
    good = {USER_ID: b("u2"), TOP_K: k(3)}
    requests = [good, {USER_ID: b(""), TOP_K: k(3)}, good, {ITEM_IDS: b(b"\xff"), TOP_K: k(3)},
                {ITEM_IDS: np.array([[b"s"] * (MAX_ITEMS_PER_REQUEST + 1)], np.object_), TOP_K: k(3)}, good]
    batch = prepare(requests, SCAT)
    assert sorted(batch.errors) == [1, 3, 4]
    assert "USER_ID is empty" in batch.errors[1] and "not UTF-8" in batch.errors[3] and "limit" in batch.errors[4]
    assert batch.spans == [(0, 0, 1), (2, 1, 2), (5, 2, 3)] and batch.dense[:, 11].tolist() == [4, 4, 4]


def test_interaction_log_accepts_any_positive_weight():
    """An interaction log's values are event weights: a new user's count above anything seen in
    training is valid (the rating scale check does not apply), a negative weight is refused."""
    log = dataclasses.replace(SCAT, low=1.0, high=3.0, implicit=True)
    rows = parse_request({ITEM_IDS: b("sku-010", "sku-020"), RATINGS: np.array([[7.0, 1.0]], np.float32),
                          TOP_K: k(3)}, log)
    assert rows[0].vals.tolist() == [7.0, 1.0]
    with pytest.raises(RequestError, match="event weights; send values above 0"):
        parse_request({ITEM_IDS: b("sku-010"), RATINGS: np.array([[-2.0]], np.float32), TOP_K: k(3)}, log)
    with pytest.raises(RequestError, match="outside scale 1..3"):  # the same values on a rating scale
        parse_request({ITEM_IDS: b("sku-010"), RATINGS: np.array([[7.0]], np.float32), TOP_K: k(3)},
                      dataclasses.replace(log, implicit=False))


def test_integer_ids_find_their_columns_by_table_as_by_search():
    # CAT's ids 10..120 fill a table; ids 1,000 apart (too sparse for one) are searched, as
    # negative ones are; ids at int64's top, where an offset from int64's bottom wraps around.
    lo, top = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    sparse = dataclasses.replace(CAT, item_ids=CAT.item_ids * 1000)
    high = dataclasses.replace(CAT, item_ids=np.arange(top - 11, top + 1, dtype=np.int64))
    negative = dataclasses.replace(CAT, item_ids=CAT.item_ids - 60)
    assert CAT.item_table is not None and high.item_table is not None
    assert sparse.item_table is None and negative.item_table is None
    for catalogue in (CAT, sparse, high, negative):
        ids = [int(i) for i in catalogue.item_ids]
        sent = [ids[0], ids[3] + 1, ids[-1], PAD, lo, lo + 5, top, ids[0] - 1, ids[5], 0, 15_000]
        sent = np.array([[min(v, top) for v in sent]], np.int64)
        pos, known = catalogue.item_columns(sent)
        assert pos.shape == known.shape == sent.shape
        assert known.tolist() == np.isin(sent, catalogue.item_ids).tolist()
        assert (catalogue.item_ids[pos[known]] == sent[known]).all()
