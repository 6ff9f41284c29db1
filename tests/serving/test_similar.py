"""serving/similar.py without a server: the item-item scores and the top-K against a brute-force
numpy sort, the seeds never returned, the rules and the blocklist applied, the request's errors."""
import dataclasses

import numpy as np
import pytest

from serving.contract import EXCLUDE_IDS, INCLUDE_IDS, ITEM_IDS, TOP_K
from serving.requests import Catalogue, RequestError
from serving.similar import (answer, item_item_scores, parse_similar, seed_columns, seed_vectors,
                             top_k_similar)

N = 40
IDS = np.arange(100, 100 + 10 * N, 10, dtype=np.int64)   # items 100, 110, ..., 490
CAT = Catalogue(item_ids=IDS, user_ids=np.array([1], np.int64), indptr=np.array([0, 0], np.int64),
                indices=np.zeros(0, np.int64), data=np.zeros(0, np.float32), low=1.0, high=5.0)


def brute_force(weights, seeds, blocked, k):
    """One row's list by a full stable argsort of the summed seed rows, seeds and blocked items out."""
    scores = weights[list(seeds)].sum(axis=0)
    allowed = [j for j in np.argsort(-scores, kind="stable") if j not in seeds and not blocked[j]]
    return allowed[:k] + [-1] * (k - len(allowed[:k]))


def weights(seed=0):
    B = np.random.default_rng(seed).normal(size=(N, N)).astype(np.float32)
    np.fill_diagonal(B, 0)
    return B


def test_item_item_scores_are_the_seed_vectors_times_the_weights():
    B = weights()
    seeds = [np.array([3]), np.array([1, 7, 30])]
    np.testing.assert_allclose(item_item_scores(B, seeds), seed_vectors(N, seeds) @ B, rtol=1e-6, atol=1e-6)
    assert seed_vectors(N, seeds, 5.0)[1].tolist() == [5.0 if j in (1, 7, 30) else 0.0 for j in range(N)]


@pytest.mark.parametrize("k", [1, 5, N])
def test_top_k_similar_equals_a_brute_force_sort(k):
    rng = np.random.default_rng(k)
    B = weights(k)
    seeds = [np.sort(rng.choice(N, size, replace=False)) for size in (1, 2, 3, 1, 5)]
    blocked = rng.random((len(seeds), N)) < 0.2
    top = top_k_similar(item_item_scores(B, seeds), seeds, blocked, k)
    for r, s in enumerate(seeds):
        assert top[r].tolist() == brute_force(B, set(s.tolist()), blocked[r], k)
        assert not set(top[r].tolist()) & set(s.tolist())


def test_every_single_seed_equals_a_brute_force_sort():
    B = weights(7)
    seeds = [np.array([j]) for j in range(N)]
    top = top_k_similar(item_item_scores(B, seeds), seeds, None, 5)
    assert top.tolist() == [brute_force(B, {j}, np.zeros(N, bool), 5) for j in range(N)]


def test_parse_applies_the_rules_and_the_blocklist():
    cat = dataclasses.replace(CAT, blocklist=np.array([2, 4], np.int64))
    tensors = {ITEM_IDS: np.array([[110, -1], [150, 160]], np.int64), TOP_K: np.array([[3], [3]], np.int32),
               EXCLUDE_IDS: np.array([[130, 9999], [-1, -1]], np.int64),
               INCLUDE_IDS: np.array([[-1, -1, -1], [170, 180, 120]], np.int64)}
    request = parse_similar(tensors, cat)
    assert [s.tolist() for s in request.seeds] == [[1], [5, 6]]
    assert request.k == 3 and request.unknown.ravel().tolist() == [1, 0]
    assert np.flatnonzero(request.blocked[0]).tolist() == [2, 3, 4]          # excluded 130, blocklist 120, 140
    assert np.flatnonzero(~request.blocked[1]).tolist() == [7, 8]            # include minus blocklist (120)
    B = weights(3)
    top, scores = answer(request, lambda x: (x != 0).astype(np.float32) @ B, cat.high)
    assert top[1].tolist() == brute_force(B, {5, 6}, request.blocked[1], 3) and top[1, 2] == -1
    assert np.isnan(scores[1, 2]) and scores[0, 0] == B[1, top[0, 0]]


@pytest.mark.parametrize("tensors,message", [
    ({ITEM_IDS: np.array([[110, 115]], np.int64)}, "unknown item 115 in ITEM_IDS"),
    ({ITEM_IDS: np.array([[-1, -1]], np.int64)}, "only padding"),
    ({TOP_K: np.array([[3]], np.int32)}, "ITEM_IDS"),
    ({ITEM_IDS: np.array([[110]], np.int64), TOP_K: np.array([[0]], np.int32)}, "TOP_K must be in 1..40"),
    ({ITEM_IDS: np.array([[110], [120]], np.int64), TOP_K: np.array([[3], [4]], np.int32)}, "differs"),
    ({ITEM_IDS: np.array([[b"x"]], np.object_)}, "must be integers"),
])
def test_a_bad_request_names_its_problem(tensors, message):
    with pytest.raises(RequestError, match=message):
        parse_similar(tensors, CAT)


def test_string_seeds_are_quoted_when_unknown():
    cat = dataclasses.replace(CAT, item_ids=np.array(["a", "b", "c"]))
    assert [s.tolist() for s in seed_columns(np.array([[b"c", b"a", b""]], np.object_), cat)] == [[0, 2]]
    with pytest.raises(RequestError, match="unknown item 'zz'"):
        seed_columns(np.array([[b"a", b"zz"]], np.object_), cat)
