"""`python -m builder.data.fetch`: put the bundled MovieLens-100K in place (used by make setup)."""
from builder.data.movielens100k import fetch_movielens_100k

if __name__ == "__main__":
    print(f"ML-100K ready in {fetch_movielens_100k()}")
