"""serving/fallback.py against hand-worked rows."""
import numpy as np

from serving.fallback import no_positive_input, with_popularity_fallback
from serving.ranking import top_k_unrated


def test_rows_without_a_positive_rating_at_the_threshold():
    dense = np.array([[0, 3, 2, 0], [0, 4, 0, 0], [0, 0, 0, 0.5]], np.float32)
    assert no_positive_input(dense, 4.0).tolist() == [True, False, True]
    assert no_positive_input(dense, 0.0).tolist() == [False, False, False]   # threshold 0: any rating


def test_cold_rows_rank_by_popularity_with_rated_items_masked():
    dense = np.array([[0, 3, 2, 0], [0, 4, 0, 0]], np.float32)
    scores = np.array([[0, 0, 0, 0], [0.1, 0.0, 0.9, 0.3]], np.float32)
    popularity = np.array([5, 9, 1, 7], np.float32)
    by = with_popularity_fallback(scores, dense, 4.0, popularity)
    assert by[0].tolist() == [5, 9, 1, 7] and by[1].tolist() == scores[1].tolist()
    # Row 0 rated items 1 and 2: the most popular of the rest, 3 (7) then 0 (5), then padding.
    assert top_k_unrated(by, dense != 0, 3).tolist() == [[3, 0, -1], [2, 3, 0]]
