"""Bytes of the files users have: gzip or plain (told by the magic bytes, not the name), and
text decoded by its byte-order mark, else UTF-8, else Latin-1. Shared by the rating-file
loaders (builder.data.loaders) and the interaction-log reader (builder.data.tables)."""
from __future__ import annotations

import codecs
import gzip

# UTF-32 is absent on purpose: its little-endian mark begins with UTF-16's.
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark at the start of `head` declares, or None."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return None


def decode_text(data: bytes) -> str:
    """A file's bytes as text: by its byte-order mark, else UTF-8, else Latin-1.

    Latin-1 decodes any bytes, so a file that is not valid UTF-8 is read as the Latin-1 that
    MovieLens and the Netflix Prize ship; a UTF-8 re-save of the same file reads as UTF-8.
    """
    encoding = bom_encoding(data[:4])
    if encoding:
        return data.decode(encoding)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path) -> bool:
    """True when the file starts with gzip's magic bytes (whatever its name says)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_bytes(path):
    """A binary file object over the file's content, decompressed when it is gzip."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
