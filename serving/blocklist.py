"""The catalogue's blocklist: items no list may return (out of stock, withdrawn), whatever the
request, changed without retraining. A file `blocklist.txt`, one raw item id a line:
`save_blocklist` writes it (atomically), `load_blocklist` reads it. The repository's own list is
at its root; builder.repository copies it into the folder of each Python model that ranks
(preprocess, the fused `recommend`, `similar`), which reads its copy at initialize. The copy
is in the model's folder so that Triton sees the model changed: a reload (`aerec reload`) loads
it again, the old instance serving until the new one is ready; a file elsewhere would leave
the model "unchanged" and the reload a no-op. numpy only, vendored with the serving package.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

BLOCKLIST_FILE = "blocklist.txt"   # in the repository's root and in each ranking model's folder


def blocklist_path(folder: str | os.PathLike) -> Path:
    """Where a folder (a repository's root, a model's folder) keeps its blocklist."""
    return Path(folder) / BLOCKLIST_FILE


def load_blocklist(folder: str | os.PathLike) -> list[str]:
    """The blocked item ids as text, in file order (blank lines and lines starting "#" skipped);
    [] where `folder` has no blocklist."""
    path = blocklist_path(folder)
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def save_blocklist(folder: str | os.PathLike, ids: list[str]) -> Path:
    """Write `ids` (raw item ids, as text; repeats dropped, order kept) as `folder`'s blocklist.
    Atomic: written beside it and renamed over it, so a model reading it meanwhile sees the old
    list or the new one, never a part. Returns the path."""
    path = blocklist_path(folder)
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

