"""The catalogue's blocklist: items no list may return (out of stock, withdrawn), whatever the
request, changed without retraining. One file at the repository's root, `blocklist.txt`, one raw
item id a line; `save_blocklist` writes it (atomically), `load_blocklist` reads it, and the
Python models that rank (preprocess, the fused `recommend`, `similar`) read it at initialize,
so a reload of those models applies a change. numpy only, vendored with the serving package.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

BLOCKLIST_FILE = "blocklist.txt"   # at the repository's root, beside aerec_repository.json


def blocklist_path(repository: str | os.PathLike) -> Path:
    """Where a repository keeps its blocklist."""
    return Path(repository) / BLOCKLIST_FILE


def load_blocklist(repository: str | os.PathLike) -> list[str]:
    """The blocked item ids as text, in file order (blank lines and lines starting "#" skipped);
    [] where the repository has no blocklist."""
    path = blocklist_path(repository)
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def save_blocklist(repository: str | os.PathLike, ids: list[str]) -> Path:
    """Write `ids` (raw item ids, as text; repeats dropped, order kept) as the repository's
    blocklist. Atomic: written beside it and renamed over it, so a model reading it meanwhile
    sees the old list or the new one, never a part. Returns the path."""
    path = blocklist_path(repository)
    text = "".join(f"{i}\n" for i in dict.fromkeys(str(i).strip() for i in ids))
    fd, tmp = tempfile.mkstemp(prefix=f".{BLOCKLIST_FILE}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def blocked_columns(ids: list[str], item_ids: np.ndarray) -> np.ndarray:
    """The item columns (int64, sorted) of the blocked `ids` (text) in a catalogue's sorted
    `item_ids` (int64 or unicode); ids it does not hold are skipped (an item since removed from
    the catalogue, or one of another catalogue's)."""
    if item_ids.dtype.kind == "U":
        raw = np.array(ids, dtype=str)
    else:
        raw = np.array([int(i) for i in ids if i.lstrip("-").isdigit()], dtype=np.int64)
    if not raw.size or not item_ids.size:
        return np.zeros(0, np.int64)
    cols = np.clip(np.searchsorted(item_ids, raw), 0, len(item_ids) - 1)
    return np.unique(cols[item_ids[cols] == raw]).astype(np.int64)


def repository_root(model_folder: str | os.PathLike) -> Path:
    """A Python model's repository root from its `args["model_repository"]` (the model's folder)."""
    return Path(model_folder).resolve().parent
