"""serving/fallback.py against hand-worked rows."""
import numpy as np

from serving.fallback import no_positive_input, with_popularity_fallback
from serving.lists import Lists
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


def test_cold_rows_are_the_empty_ones_and_those_without_a_positive_input():
    # Rows: none rated, only below the threshold, one at it, one negative rating (a -10..10 scale).
    dense = np.array([[0, 0, 0, 0], [0, 3, 2, 0], [0, 4, 0, 0], [-2, 0, 0, 0]], np.float32)
    ids, titles = np.arange(1, 5, dtype=np.int64), np.array([b"a", b"b", b"c", b"d"], np.object_)
    popularity = np.ones(4, np.float32)
    lists = lambda ranker, threshold: Lists(ids, titles, -10.0, 10.0, ranker, True, threshold, popularity)  # noqa: E731
    assert lists(True, 4.0).cold(dense).tolist() == [True, True, False, True]
    assert lists(True, 0.0).cold(dense).tolist() == [True, False, False, True]
    assert lists(False, None).cold(dense).tolist() == [True, False, False, False]   # no ranker: empty rows only
    assert not Lists(ids, titles, 1.0, 5.0, True, True, 4.0, None).cold(dense).any()   # no popularity: none
