"""Per-request rules (EXCLUDE_IDS, INCLUDE_IDS) and the cold start, in-process: the pure ranked
list (serving/rules.py) equals a brute-force numpy argsort under the same rules for every u1
test user, through the request parsing the served models run (serving/requests.py), the fused
model's ONNX graph (serving/ranking_graph.py) and the lists (serving/lists.py)."""
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from builder.export import export_onnx_fp32
from builder.models import build_model
from builder.models.popularity import item_counts
from builder.repository import RepositoryError, write_repository
from serving.contract import (BLOCKED, COLD_START_POPULARITY, EXCLUDE_IDS, INCLUDE_IDS, ITEM_IDS, MAX_RULE_IDS, PAD,
                              RATINGS, SOURCE_MODEL, SOURCE_POPULARITY, TOP_K, USER_ID)
from serving.lists import Lists
from serving.ranking_graph import K, TOP_INDICES, with_top_k
from serving.requests import Catalogue, RequestError, densify, parse_request
from serving.rules import rule_mask, top_k_allowed

K_LIST = 10


@pytest.fixture(scope="module")
def catalogue(u1):
    """What the u1 build's preprocess step loads, with the popularity cold start."""
    hist = u1.train.tocsr()
    return Catalogue(np.asarray(u1.item_ids), np.asarray(u1.user_ids), hist.indptr.astype(np.int64),
                     hist.indices.astype(np.int64), hist.data.astype(np.float32), *map(float, u1.scale),
                     cold_start=COLD_START_POPULARITY)


def brute_force(scores, rated, exclude_cols, include_cols, k):
    """One row's list by a full stable argsort: the allowed items (not rated, not excluded,
    included where an include rule is given) by score, highest first, ties to the lower index;
    then PAD up to min(k, n_items)."""
    allowed = ~rated
    allowed[exclude_cols] = False
    if include_cols is not None:
        only = np.zeros_like(allowed)
        only[include_cols] = True
        allowed &= only
    order = np.argsort(-scores, kind="stable")
    chosen = order[allowed[order]][:k]
    return np.concatenate([chosen, np.full(min(k, len(scores)) - len(chosen), PAD)])


def random_rules(rng, u1, n_rows):
    """Per row: raw exclude ids and raw include ids (None: no include rule), each with some ids
    the catalogue does not have (negative: never an item id, never the padding -1)."""
    rows = []
    for r in range(n_rows):
        exclude = rng.choice(u1.item_ids, rng.integers(0, 60), replace=False).tolist()
        exclude += (-rng.integers(2, 1000, rng.integers(0, 3))).tolist()
        include = None
        if r % 2:   # every other row: an include rule, some smaller than K (a short list)
            include = rng.choice(u1.item_ids, rng.integers(1, 40), replace=False).tolist()
            include += (-rng.integers(2, 1000, rng.integers(0, 3))).tolist()
        rows.append((exclude, include))
    return rows


def padded(lists):
    width = max(1, max(len(v) for v in lists))
    out = np.full((len(lists), width), PAD, np.int64)
    for r, v in enumerate(lists):
        out[r, :len(v)] = v
    return out


def test_every_u1_test_user_with_random_rules_equals_the_brute_force_list(u1, catalogue):
    """Known users (USER_ID) with random EXCLUDE_IDS/INCLUDE_IDS: parsed and masked as the served
    steps do, ranked by top_k_allowed, equal a full argsort under the same rules; nothing
    excluded or outside the include set comes back; the list is K long while K items are allowed."""
    rng = np.random.default_rng(0)
    users = np.flatnonzero(np.diff(u1.test.indptr) > 0)
    assert len(users) > 400
    # Scores with ties (two decimals), so the tie rule is exercised too.
    scores = np.round(rng.random((len(users), u1.n_items)), 2).astype(np.float32)
    rules = random_rules(rng, u1, len(users))
    parsed = parse_request({USER_ID: np.asarray(u1.user_ids)[users].reshape(-1, 1),
                            EXCLUDE_IDS: padded([e for e, _ in rules]),
                            INCLUDE_IDS: padded([i if i is not None else [] for _, i in rules]),
                            TOP_K: np.full((len(users), 1), K_LIST, np.int32)}, catalogue)
    dense, _, unknown, blocked = densify(parsed, catalogue)
    rated = dense != 0
    top = top_k_allowed(scores, rated, blocked, K_LIST)
    ids = np.asarray(u1.item_ids)
    for j, (exclude, include) in enumerate(rules):
        col = lambda raw: np.searchsorted(ids, [i for i in raw if i in set(ids.tolist())])  # noqa: E731
        ex, inc = col(exclude), None if include is None else col(include)
        ref = brute_force(scores[j], u1.train[users[j]].toarray()[0] != 0, ex, inc, K_LIST)
        assert top[j].tolist() == ref.tolist()
        real = top[j][top[j] >= 0]
        assert not set(real.tolist()) & set(ex.tolist())
        assert not rated[j, real].any()
        n_allowed = int((~rated[j] & ~blocked[j]).sum())
        assert len(real) == min(K_LIST, n_allowed)
        if inc is not None:
            assert set(real.tolist()) <= set(inc.tolist())
        n_unknown = sum(i < 0 for i in exclude) + (0 if include is None else sum(i < 0 for i in include))
        assert unknown[j, 0] == n_unknown
    # Both kinds of row occur: full lists and lists cut short by a small include set.
    n = (top >= 0).sum(axis=1)
    assert (n == K_LIST).sum() > 100 and (n < K_LIST).sum() > 20


def test_new_users_with_rules_fold_in_as_without(u1, catalogue):
    """ITEM_IDS + RATINGS rows with rules: the dense rows are those of the same request without
    rules, the rules only in the mask; the rated items stay masked."""
    rows = [u1.train[u] for u in range(3)]
    items = padded([u1.item_ids[r.indices].tolist() for r in rows])
    ratings = np.zeros(items.shape, np.float32)
    for j, r in enumerate(rows):
        ratings[j, :r.nnz] = r.data
    plain = {ITEM_IDS: items, RATINGS: ratings, TOP_K: np.full((3, 1), 5, np.int32)}
    ruled = {**plain, EXCLUDE_IDS: padded([[1, 2], [], [50]]), INCLUDE_IDS: padded([[], [1, 2, 3, 4, 5, 6], []])}
    d0, _, _, b0 = densify(parse_request(plain, catalogue), catalogue)
    d1, _, _, b1 = densify(parse_request(ruled, catalogue), catalogue)
    assert np.array_equal(d0, d1) and not b0.any()
    col = lambda i: int(np.searchsorted(u1.item_ids, i))  # noqa: E731
    assert b1[0, [col(1), col(2)]].all() and b1[0].sum() == 2          # exclude only
    assert b1[1].sum() == u1.n_items - 6                                # include: six allowed
    assert b1[2, col(50)] and b1[2].sum() == 1                          # a padding-only include: no rule
    top = top_k_allowed(np.ones_like(d1), d1 != 0, b1, 5)
    assert not (d1 != 0)[np.arange(3)[:, None], np.maximum(top, 0)][top >= 0].any()


def test_rule_mask_both_rules_and_an_empty_include():
    blocked = rule_mask(5, [np.array([1]), np.array([], np.int64), np.array([], np.int64)],
                        [np.array([1, 2]), None, np.array([], np.int64)])
    assert blocked.tolist() == [[True, True, False, True, True], [False] * 5, [True] * 5]
    with pytest.raises(ValueError, match="2 exclude rows but 1 include rows"):
        rule_mask(5, [np.array([1])] * 2, [None])


@pytest.mark.parametrize("name", [EXCLUDE_IDS, INCLUDE_IDS])
def test_rule_beyond_its_limit_is_refused_naming_it(catalogue, name):
    ids = np.arange(1, MAX_RULE_IDS + 2, dtype=np.int64)[None]
    with pytest.raises(RequestError, match=f"{name} has {MAX_RULE_IDS + 1} ids per row; the limit is "
                                           f"{MAX_RULE_IDS} \\(MAX_RULE_IDS\\)"):
        parse_request({USER_ID: np.array([[1]], np.int64), name: ids, TOP_K: np.array([[10]], np.int32)}, catalogue)
    ok = parse_request({USER_ID: np.array([[1]], np.int64), name: ids[:, :MAX_RULE_IDS],
                        TOP_K: np.array([[10]], np.int32)}, catalogue)
    assert ok[0].unknown == MAX_RULE_IDS - catalogue.n_items   # ids beyond 1682: unknown, counted


@pytest.mark.parametrize("tensors, message", [
    ({EXCLUDE_IDS: np.array([[b"50"]], np.object_)}, "EXCLUDE_IDS must be integers for this model"),
    ({INCLUDE_IDS: np.array([[1.5]], np.float32)}, "INCLUDE_IDS must be integers for this model"),
    ({EXCLUDE_IDS: np.array([[1], [2]], np.int64)}, "EXCLUDE_IDS has 2 rows but TOP_K has 1"),
])
def test_bad_rules_are_refused_with_their_reason(catalogue, tensors, message):
    with pytest.raises(RequestError, match=message):
        parse_request({USER_ID: np.array([[1]], np.int64), TOP_K: np.array([[10]], np.int32), **tensors}, catalogue)


def test_cold_start_popularity_or_refuse(u1, catalogue):
    """An unknown USER_ID, and a known user with no training ratings, parse as a row with no
    ratings (the popularity list) where the repository says so; refused (400) otherwise. An
    unknown user's sent history still folds in."""
    # The catalogue with user 1's training ratings gone (u1 has no such user of its own).
    start = int(catalogue.indptr[1])
    catalogue = Catalogue(catalogue.item_ids, catalogue.user_ids, np.maximum(catalogue.indptr - start, 0),
                          catalogue.indices[start:], catalogue.data[start:], 1.0, 5.0, cold_start=COLD_START_POPULARITY)
    no_history = int(catalogue.user_ids[0])
    assert catalogue.history[0] == 0 and catalogue.history[1] > 0
    k = np.array([[10]], np.int32)
    for uid in (999_999, no_history):
        rows = parse_request({USER_ID: np.array([[uid]], np.int64), TOP_K: k}, catalogue)
        dense, *_ = densify(rows, catalogue)
        assert not dense.any()
    folded = parse_request({USER_ID: np.array([[999_999]], np.int64), ITEM_IDS: np.array([[50, 172]], np.int64),
                            TOP_K: k}, catalogue)
    assert folded[0].user_row == -1 and folded[0].cols.size == 2
    refuse = dataclasses.replace(catalogue, cold_start="refuse")
    with pytest.raises(RequestError, match="unknown USER_ID 999999"):
        parse_request({USER_ID: np.array([[999_999]], np.int64), TOP_K: k}, refuse)
    with pytest.raises(RequestError, match=f"user {no_history} has no ratings in the training data"):
        parse_request({USER_ID: np.array([[no_history]], np.int64), TOP_K: k}, refuse)
    with pytest.raises(RequestError, match="unknown USER_ID 999999"):
        parse_request({USER_ID: np.array([[999_999]], np.int64), ITEM_IDS: np.array([[50]], np.int64),
                       TOP_K: k}, refuse)


@pytest.mark.parametrize("ranker, rater", [(True, True), (False, True)])
def test_cold_rows_get_the_popularity_list_marked_and_ruled(u1, catalogue, ranker, rater):
    """Lists.rank: a row with no ratings is ranked by popularity (SOURCE popularity, SCORES the
    counts, no predicted ratings: NaN), its rules applied; its neighbour keeps the model's list
    (SOURCE model) and the rater's predictions."""
    popularity = item_counts(u1.train).astype(np.float32)
    titles = np.array([t.encode() for t in u1.titles], np.object_)
    lists = Lists(np.asarray(u1.item_ids), titles, 1.0, 5.0, ranker, rater, 4.0 if ranker else None, popularity)
    dense = np.zeros((2, u1.n_items), np.float32)
    dense[1] = u1.train[0].toarray()[0]
    rng = np.random.default_rng(1)
    net = rng.random((2, u1.n_items)).astype(np.float32) * 4 + 1
    blocked = rule_mask(u1.n_items, [np.argsort(-popularity)[:3], np.array([], np.int64)], [None, None])
    rated = (dense != 0) | blocked
    (ids, scores, ratings, _, n, source), = lists.rank(net if ranker else None, net if rater else None, rated,
                                                       [2], [10], dense)
    cold = top_k_allowed(np.broadcast_to(popularity, (1, u1.n_items)), dense[:1] != 0, blocked[:1], 10)[0]
    assert ids[0].tolist() == u1.item_ids[cold].tolist()
    assert scores[0].tolist() == popularity[cold].tolist()
    warm = top_k_allowed(net[1:], dense[1:] != 0, None, 10)[0]
    assert ids[1].tolist() == u1.item_ids[warm].tolist()
    assert source[:, 0].tolist() == [SOURCE_POPULARITY, SOURCE_MODEL] and n[:, 0].tolist() == [10, 10]
    # The cold row rated nothing: no predicted ratings (NaN); the warm row has the rater's.
    assert np.isnan(ratings[0]).all()
    np.testing.assert_allclose(ratings[1], np.clip(net[1, warm], 1, 5))


def test_in_graph_rules_equal_top_k_allowed(u1, tmp_path):
    """The fused model's graph with the BLOCKED input selects what top_k_allowed selects."""
    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    export_onnx_fp32(build_model("deeprec", u1.n_items, hidden=(32,)).eval(), u1.n_items, path)
    x = u1.train[:100].toarray().astype(np.float32)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    preds = plain.run(None, {plain.get_inputs()[0].name: x})[0]
    fused = ort.InferenceSession(with_top_k(onnx.load(str(path)), blocked=True).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    rules = [(rng.choice(u1.n_items, 40, replace=False), rng.choice(u1.n_items, 30, replace=False) if r % 2 else None)
             for r in range(len(x))]
    blocked = rule_mask(u1.n_items, [e for e, _ in rules], [i for _, i in rules])
    for k in (1, 10, 50):
        top, = fused.run([TOP_INDICES], {fused.get_inputs()[0].name: x, K: np.array([k], np.int64), BLOCKED: blocked})
        assert np.array_equal(top, top_k_allowed(preds, x != 0, blocked, k))


def test_an_unknown_cold_start_option_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(RepositoryError, match="cold_start must be one of \\('popularity', 'refuse'\\), got 'maybe'"):
        write_repository(tmp_path / "run", tmp_path / "out", cold_start="maybe")
    assert not (tmp_path / "out").exists()


def test_string_ids_rules_pad_with_empty_bytes_and_count_the_unknown():
    ids = np.array([f"sku-{i:03d}" for i in range(10, 121, 10)])
    cat = Catalogue(ids, np.array(["u1", "u2"]), np.array([0, 2, 2], np.int64), np.array([0, 1], np.int64),
                    np.array([5.0, 4.0], np.float32), 1.0, 5.0, cold_start=COLD_START_POPULARITY)
    rows = parse_request({USER_ID: np.array([[b"u1"], [b"u9"]], np.object_),
                          EXCLUDE_IDS: np.array([[b"sku-030", b"sku-999"], [b"", b""]], np.object_),
                          INCLUDE_IDS: np.array([[b"", b""], [b"sku-050", b"sku-060"]], np.object_),
                          TOP_K: np.array([[3], [3]], np.int32)}, cat)
    dense, _, unknown, blocked = densify(rows, cat)
    assert unknown[:, 0].tolist() == [1, 0] and rows[1].user_row == -1 and not dense[1].any()
    assert np.flatnonzero(blocked[0]).tolist() == [2] and np.flatnonzero(~blocked[1]).tolist() == [4, 5]
    top = top_k_allowed(np.arange(12, dtype=np.float32)[None].repeat(2, 0), dense != 0, blocked, 3)
    assert top.tolist() == [[11, 10, 9], [5, 4, PAD]]
