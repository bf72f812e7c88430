"""Publishing output files whole or not at all, and checking output locations before work.

Every writer goes through a unique temporary file beside its target (so two writers never
share one) and an atomic rename, so a reader sees the old file or the new one, never half of
one; the locations are checked before a long run starts, so a bad `--out` fails at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["OutputError", "atomic_open", "check_output_dir", "check_output_file"]


class OutputError(ValueError):
    """An output location that cannot be written (occupied, read-only, not a folder)."""


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a unique temporary file beside `path` for writing; on a clean exit it is renamed
    over `path`, on an error removed (`path` untouched). `mode` is "w" or "wb"; `kwargs`
    go to `open` (encoding, errors, newline)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _probe_dir(folder: Path, what: str) -> None:
    """Create and remove a temporary file in `folder`: the only sure test that it is writable."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".feddymem-probe.", dir=folder)
    except OSError as err:
        raise OutputError(f"{what}: cannot write in {folder} ({err.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: Path, *, what: str = "--out") -> Path:
    """Check, before any work, that the file `path` can be written: it is not a folder and its
    folder exists (or can be made) and is writable. Returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give the file to write")
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {path} exists and is not a regular file")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path}: cannot create {parent} ({err.strerror})") from None
    _probe_dir(parent, f"{what} {path}")
    return path


def check_output_dir(path: Path, *, what: str = "--out") -> Path:
    """Check, before any work, that the folder `path` can be written: it is a folder or can be
    made one, and files can be created in it. Returns `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path}: cannot create the folder ({err.strerror})") from None
    _probe_dir(path, f"{what} {path}")
    return path
