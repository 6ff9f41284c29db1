"""The admin key: its wire format, shared by the launcher (which sets it) and the SDK (which
sends it), and the key file `aerec serve --admin-key-file` writes and `aerec reload` reads.

Triton's restricted-protocol setting checks one extra header on every call to the listed APIs;
gRPC carries it as metadata with Triton's fixed prefix.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from serving.contract import ADMIN_HEADER, admin_headers  # noqa: F401  (the wire format: the contract's)

RESTRICTED = "model-repository,logging,trace,shared-memory"  # what only the admin key may call


class AdminKeyError(ValueError):
    """The key file is missing (where it must exist) or readable by others than its owner."""


def read_admin_key(path: Path) -> str:
    """The key stored in the file `path`. Raises AdminKeyError when there is no such file or
    when its group or others have any permission on it: the key unlocks model load/unload."""
    path = Path(path)
    if not path.is_file():
        raise AdminKeyError(f"{path}: no admin key file (the server's `aerec serve --admin-key-file` writes it)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminKeyError(f"{path}: readable by others; chmod 600 it (it unlocks model load/unload)")
    return path.read_text().strip()


def create_admin_key(path: Path) -> str:
    """Write a new random key (32 bytes, URL-safe base64) to `path`, created with mode 600 (never
    over an existing file: FileExistsError), and return it."""
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
