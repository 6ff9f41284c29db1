"""Errors raised where bad rating data enters the system."""
from __future__ import annotations


class DataFormatError(ValueError):
    """A ratings or metadata file that cannot be read as declared.

    The message always names the file and, where one exists, the 1-based line.
    """

    def __init__(self, path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def row_error(path, line_of_row, i: int, message: str, file_of_row=None) -> DataFormatError:
    """The error for parsed row `i`: its file and line.

    `path` is one file, or, when the rows came from several files, the list of them, with
    `file_of_row[i]` the index of row i's file in it.
    """
    where = path if file_of_row is None else path[int(file_of_row[i])]
    return DataFormatError(where, message, int(line_of_row[i]))
