import numpy as np

from builder.data.synthetic import synthetic_dataset, synthetic_ratings


def test_synthetic_shape_scale_and_popularity():
    m = synthetic_ratings(2000, 500, 40_000, seed=1)
    assert m.shape == (2000, 500)
    assert 30_000 < m.nnz <= 40_000 * 1.05
    assert set(np.unique(m.data)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    pop = np.sort(np.bincount(m.indices, minlength=500))[::-1]
    # uniform popularity would give the top 10% of items a fifth of the bottom half's ratings
    assert pop[:50].sum() > 2 * pop[-250:].sum()
    m.sum_duplicates()
    assert m.has_canonical_format


def test_synthetic_is_seeded():
    a = synthetic_ratings(300, 100, 3000, seed=5)
    b = synthetic_ratings(300, 100, 3000, seed=5)
    assert (a != b).nnz == 0


def test_synthetic_dataset_split():
    d = synthetic_dataset(500, 200, 10_000, seed=0)
    assert d.train.nnz + d.test.nnz > 9_000 and d.train.multiply(d.test).nnz == 0
