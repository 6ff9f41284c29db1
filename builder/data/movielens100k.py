"""MovieLens-100K as bundled in the recbole 1.2.1 wheel (the original u.data row order).

We take only the data files out of the wheel; importing RecBole itself pulls heavy
dependencies we do not need.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from builder.data.errors import DataFormatError
from builder.data.loaders import ML_SCALE, _finish, _numeric, _read_table
from builder.data.ratings import Ratings

RECBOLE_WHEEL = "recbole==1.2.1"
MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
WHEEL_DIR = "recbole/dataset_example/ml-100k/"


def data_dir() -> Path:
    """Where datasets live: $AEREC_DATA, else `data/` at the project root."""
    env = os.environ.get("AEREC_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def ml100k_dir() -> Path:
    """Where ML-100K's files (u.data, u.item, u1.base ...) are fetched to: data_dir()/ml-100k."""
    return data_dir() / "ml-100k"


def fetch_movielens_100k(dest: Path | None = None, quiet: bool = True) -> Path:
    """Extract ML-100K from the recbole wheel into `dest` (idempotent)."""
    dest = Path(dest) if dest else ml100k_dir()
    if all((dest / m).is_file() for m in MEMBERS):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, RECBOLE_WHEEL]
        if quiet:
            cmd.insert(4, "-q")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for m in MEMBERS:
                (dest / m).write_bytes(zf.read(WHEEL_DIR + m))
    return dest


def load_movielens_100k(directory: Path | None = None) -> Ratings:
    """All 100,000 ratings in u.data order, with 'Title (year)' for each of the 1,682 items."""
    directory = Path(directory) if directory else ml100k_dir()
    inter = directory / "ml-100k.inter"
    if not inter.is_file():
        raise DataFormatError(inter, "MovieLens-100K not found; run `make setup` "
                              "(or `python -m builder.data.fetch`) to extract it from the recbole wheel")
    raw, lines = _read_table(inter, "\t", ["user", "item", "rating", "timestamp"], [0, 1, 2, 3], 1)
    frame = _numeric(raw, inter, lines)
    items = pd.read_csv(directory / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = [c.split(":")[0] for c in items.columns]
    titles = {
        int(i): (f"{t} ({y})" if y else t)
        for i, t, y in zip(items["item_id"], items["movie_title"], items["release_year"])
    }
    return _finish(frame, inter, ML_SCALE, lines, titles, "error")
