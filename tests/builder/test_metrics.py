import numpy as np
import scipy.sparse as sp

from builder.metrics import coverage, mae, ndcg_at_k, recall_at_k, rmse
from serving.ranking import top_k_unrated


def test_rmse_mae_clip_by_hand():
    pred = np.array([6.0, 2.0, 0.0])
    truth = np.array([5.0, 3.0, 1.0])
    # clipped to 1..5: [5, 2, 1] -> errors [0, 1, 0]
    assert rmse(pred, truth, (1, 5)) == np.sqrt(1 / 3)
    assert mae(pred, truth, (1, 5)) == 1 / 3
    assert rmse(pred, truth) == 1.0


def test_top_k_excludes_rated_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
    rated = np.array([[False, True, False, False, False], [False] * 5])
    top = top_k_unrated(scores, rated, 3)
    assert top.tolist() == [[3, 2, 4], [0, 1, 2]]


def test_top_k_agrees_with_full_sort():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 300)).astype(np.float32)
    rated = rng.random((50, 300)) < 0.2
    top = top_k_unrated(scores, rated, 10)
    for s, r, t in zip(scores, rated, top):
        ref = [i for i in np.argsort(-s, kind="stable") if not r[i]][:10]
        assert t.tolist() == ref


def test_recall_ndcg_coverage_by_hand():
    top = np.array([[0, 1, 2], [3, 4, 5]])
    relevant = sp.csr_matrix(np.array([[1, 0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1]]))
    users = np.array([0, 1])
    # user 0: hits {0, 2} of 3 relevant, k=3 -> 2/3; user 1: 0 of 1 -> 0
    assert np.isclose(recall_at_k(top, relevant, users), (2 / 3 + 0) / 2)
    d = 1 / np.log2([2, 3, 4])
    ndcg0 = (d[0] + d[2]) / d.sum()
    assert np.isclose(ndcg_at_k(top, relevant, users), (ndcg0 + 0) / 2)
    assert coverage(top, 10) == 0.6


def test_top_k_breaks_ties_at_the_boundary_by_lower_index():
    """Equal scores across the k-th place: the lowest indices are chosen (ONNX TopK's rule), so
    offline ranking, the served graph and any k agree on which tied items make the list."""
    import numpy as np

    from serving.ranking import top_k_unrated
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 40)).astype(np.float32)   # many ties
    rated = rng.random((50, 40)) < 0.2
    for k in (1, 3, 10, 39):
        top = top_k_unrated(scores, rated, k)
        for s, r, t in zip(scores, rated, top):
            unrated = [i for i in np.lexsort((np.arange(40), -s)) if not r[i]]
            expected = (unrated + [-1] * 40)[:k]
            assert t.tolist() == expected
        assert (top_k_unrated(scores, rated, 39)[:, :k] == top).all()
