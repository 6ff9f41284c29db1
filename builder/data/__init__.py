"""Rating data: loaders for real formats, splits, the `Dataset` container, synthetic data."""
from builder.data.dataset import Dataset, build_dataset
from builder.data.errors import DataFormatError
from builder.data.loaders import (
    load_csv, load_netflix, load_ratings_csv, load_ratings_dat, load_udata,
)
from builder.data.movielens100k import fetch_movielens_100k, load_movielens_100k
from builder.data.ratings import Ratings
from builder.data.splits import (
    SplitError, holdout_entries, split_canonical, split_per_user, split_random, split_temporal,
)

__all__ = [
    "Dataset", "build_dataset", "DataFormatError", "Ratings", "SplitError",
    "load_csv", "load_netflix", "load_ratings_csv", "load_ratings_dat", "load_udata",
    "fetch_movielens_100k", "load_movielens_100k",
    "holdout_entries", "split_canonical", "split_per_user", "split_random", "split_temporal",
]
