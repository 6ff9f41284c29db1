"""User and item ids as the file has them.

One rule per column (users and items are decided separately): if every id is a canonical
integer (`0`, `42`, `-7`: no sign on zero, no leading zeros, no spaces, no `+`) that fits int64,
the ids are int64, so integer catalogues behave exactly as they always have; otherwise the
column keeps its strings, so `00123` stays `00123` and `0042` and `42` are two items.

String ids are indexed once: the sorted distinct ids (numpy unicode, `<U…`, never an object
array) and each row's int64 code into them, so 20M rows never become 20M Python strings.
Spaces around an id are not part of it (` 42` is 42).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CANONICAL_INT = r"^(0|-?[1-9][0-9]{0,18})$"
INT64_MAX = np.iinfo(np.int64).max


def is_canonical_int(ids: pa.Array) -> bool:
    """True when every string of `ids` (a pyarrow string array without nulls) is a canonical
    integer that fits int64."""
    if len(ids) == 0:
        return False
    for part in (ids.slice(0, 1000), ids):  # string ids usually show in the first rows: skip the full pass
        if not pc.all(pc.match_substring_regex(part, CANONICAL_INT)).as_py():
            return False
    # 19 digits may still overflow int64 (9,223,372,036,854,775,807): check those few.
    long = pc.filter(ids, pc.greater_equal(pc.utf8_length(ids), 19))
    return all(abs(int(s)) <= INT64_MAX for s in long.to_pylist())


def encode_ids(ids: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, vocab) for one id column (pyarrow string or integer array, no nulls).

    Canonical integers (or an integer column): (int64 ids, None). Otherwise (int64 codes,
    vocab): vocab holds the sorted distinct strings as numpy unicode, codes[i] indexes row i's
    id in it (codes therefore sort as the ids do). Spaces around an id are dropped; an empty id
    becomes "" (vocab[0], as "" sorts first), for the caller to refuse.

    Every check runs on the distinct ids (the dictionary), not on every row: a 20M-row log with
    200k users costs one hashing pass and one gather over the rows."""
    if pa.types.is_dictionary(ids.type) and not pa.types.is_string(ids.type.value_type):
        ids = ids.cast(ids.type.value_type)
    if pa.types.is_integer(ids.type):
        return ids.to_numpy().astype(np.int64, copy=False), None
    # A dictionary column (Parquet read with read_dictionary) is already encoded: no hashing pass.
    # Chunks (CSV blocks, Parquet row groups) share one dictionary before they are joined, so only
    # the int32 indices are copied, never the text.
    encoded = ids if pa.types.is_dictionary(ids.type) else pc.dictionary_encode(ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks()
    words = pc.utf8_trim_whitespace(encoded.dictionary)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    del encoded
    if is_canonical_int(words):
        return pc.cast(words, pa.int64()).to_numpy(zero_copy_only=False)[indices], None
    vocab, inverse = np.unique(np.asarray(words.to_pylist(), dtype=str), return_inverse=True)
    return inverse.astype(np.int64)[indices], vocab


def id_kind(ids: np.ndarray) -> str:
    """"int64" or "string": how a Dataset's id array is kept (its dtype's kind)."""
    return "string" if np.asarray(ids).dtype.kind == "U" else "int64"
