"""Reading interaction-log files into Arrow columns: CSV and TSV (plain or gzip, told by the
file's magic bytes, not its name) and Parquet.

Delimited text goes through pyarrow's multi-threaded CSV reader: ids arrive as Arrow strings
(a few bytes each, not a Python object per row), so a 20M-row log loads in a fraction of the
memory a pandas object column takes. Lines that are empty or hold only spaces are skipped, as
the other loaders do. Row numbers are not tracked while reading (that would cost a pass and an
array); when a row is refused, `line_of_row` finds its file line by reading the file again,
which only an error pays for.
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from builder.data.errors import DataFormatError
from builder.data.text_io import bom_encoding, decode_text, is_gzip, open_bytes


def require_file(path) -> Path:
    """`path` as a Path; DataFormatError when it is missing or empty (compressed or not)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "no events found (empty file)")
    if is_gzip(path):
        try:
            with gzip.open(path, "rb") as f:
                empty = not f.read(1)
        except (OSError, EOFError) as e:
            raise DataFormatError(path, f"gzip-compressed but cannot be decompressed ({e})") from None
        if empty:
            raise DataFormatError(path, "no events found (empty file once decompressed from gzip)")
    return path


def text_encoding(path) -> str:
    """The encoding to read a delimited file with: its byte-order mark's, else UTF-8 (Latin-1
    is the fallback tried when UTF-8 fails)."""
    with open_bytes(path) as f:
        return {"utf-16": "utf-16"}.get(bom_encoding(f.read(4)) or "", "utf-8")


# The longest first line read for a header: a file with no line end in its first MiB has none.
HEADER_LIMIT = 1 << 20


def header(path, sep: str) -> list[str]:
    """The column names in the first line of a delimited file (plain or gzip), stripped.
    Raises DataFormatError naming the file where that line is not delimited text: bytes that
    are not text, lines that end in a carriage return alone (classic Mac OS, which no reader
    here splits), or no line end in the first HEADER_LIMIT bytes."""
    with open_bytes(path) as f:
        head = f.readline(HEADER_LIMIT)
        if bom_encoding(head[:4]) == "utf-16":  # a UTF-16 line ends two bytes later
            f.seek(0)
            head = io.TextIOWrapper(f, encoding="utf-16").readline(HEADER_LIMIT).encode("utf-8")
    line = decode_text(head).rstrip("\r\n")
    controls = sum(ord(c) < 32 and c not in "\t\r" for c in line)
    if "\x00" in line or controls > len(line) // 10:
        raise DataFormatError(path, "line 1 is not text: is it a delimited file (CSV, TSV)?")
    if "\r" in line:
        raise DataFormatError(path, "its lines end in a carriage return alone (classic Mac OS line ends); "
                                    "save it with LF or CRLF line ends")
    if len(head) >= HEADER_LIMIT:
        raise DataFormatError(path, f"line 1 is longer than {HEADER_LIMIT >> 20} MiB: no header line")
    try:
        return [c.strip() for c in next(csv.reader([line], delimiter=sep), [])]
    except csv.Error as e:
        raise DataFormatError(path, f"line 1: {e}") from None


def _skip_blank(row) -> str:
    """pyarrow's invalid-row handler: a line of spaces (one field where more are due) is
    skipped like an empty line; any other row of the wrong width is an error."""
    return "skip" if not row.text.strip() else "error"


def read_delimited(path, sep: str, types: dict[str, pa.DataType], encoding: str | None = None) -> pa.Table:
    """The columns named in `types` (each read as its type) of a delimited file with a header.

    Raises DataFormatError naming the file (and the line of a malformed row); pyarrow's
    ArrowInvalid for a field that does not convert to its type (the caller re-reads as text to
    name the field's line). Text that is not UTF-8 is read again as Latin-1."""
    encoding = encoding or text_encoding(path)
    names = header(path, sep)
    # The header is read here (it may hold a BOM or spaces around names): read rows only.
    read = pcsv.ReadOptions(column_names=names, skip_rows=1, encoding=encoding, block_size=1 << 24)
    parse = pcsv.ParseOptions(delimiter=sep, invalid_row_handler=_skip_blank)
    convert = pcsv.ConvertOptions(include_columns=list(types), column_types=types, strings_can_be_null=False,
                                  quoted_strings_can_be_null=False)
    try:
        stream = pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)
        return pcsv.read_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as e:
        message = str(e)
        if "UTF8" in message and encoding == "utf-8":
            return read_delimited(path, sep, types, "latin-1")
        if "conversion error" in message:
            raise
        line = _first_bad_width(path, sep, len(names), encoding)
        raise DataFormatError(path, f"malformed row: {message.split(': ', 1)[-1]} (the header has "
                              f"{len(names)} fields)", line) from None
    except (OSError, EOFError) as e:  # a truncated or damaged gzip stream
        raise DataFormatError(path, f"cannot read ({e})") from None


def _lines(path, encoding: str):
    """(line number, text) of every line after the header."""
    with open_bytes(path) as f:
        text = io.TextIOWrapper(f, encoding=encoding, errors="replace", newline=None)
        next(text, None)
        yield from enumerate(text, 2)


def _counted(text: str, sep: str, width: int) -> bool:
    """Does pyarrow read this line as a row? Empty lines and lines of spaces are skipped."""
    line = text.rstrip("\r\n")
    return bool(line.strip()) or len(line.split(sep)) == width


def line_of_row(path, sep: str, row: int, encoding: str | None = None) -> int | None:
    """The 1-based file line of data row `row` (0-based, as read by read_delimited), found by
    reading the file again (only errors pay for it). None if the file has fewer rows."""
    encoding = encoding or text_encoding(path)
    width = len(header(path, sep))
    seen = -1
    for number, text in _lines(path, encoding):
        if _counted(text, sep, width):
            seen += 1
            if seen == row:
                return number
    return None


def _first_bad_width(path, sep: str, width: int, encoding: str) -> int | None:
    """The line of the first row whose field count differs from the header's (quotes honoured)."""
    for number, text in _lines(path, encoding):
        if not text.strip():
            continue
        fields = next(csv.reader([text.rstrip("\r\n")], delimiter=sep), [])
        if len(fields) != width:
            return number
    return None


def parquet_columns(path) -> list[str]:
    """A Parquet file's column names; DataFormatError when it is not a Parquet file."""
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(path, f"cannot read as Parquet ({e})") from None


def read_parquet(path, columns: list[str], as_dictionary: tuple[str, ...] = ()) -> pa.Table:
    """The named columns of a Parquet file; string columns in `as_dictionary` come as Arrow
    dictionary arrays (Parquet stores them so: no 20M strings are materialised, no hashing)."""
    try:
        schema = pq.ParquetFile(path).schema_arrow
        strings = [c for c in as_dictionary if pa.types.is_string(schema.field(c).type)
                   or pa.types.is_large_string(schema.field(c).type)]
        return pq.read_table(path, columns=columns, read_dictionary=strings or None)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataFormatError(path, f"cannot read as Parquet ({e})") from None


def parquet_where(path, row: int) -> str:
    """'row group G, row R' (both 0-based) of the file's `row`-th row."""
    meta = pq.ParquetFile(path).metadata
    start = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if row < start + n:
            return f"row group {g}, row {row - start}"
        start += n
    return f"row {row}"
