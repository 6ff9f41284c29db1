"""Errors raised where bad rating data enters the system."""


class DataFormatError(ValueError):
    """A ratings or metadata file that cannot be read as declared.

    The message always names the file and, where one exists, the 1-based line.
    """

    def __init__(self, path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
