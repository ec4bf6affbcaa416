"""Atomic file writes: a crash never leaves a half-written checkpoint or result."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_temp(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, flush it to disk and
    return its name; ``os.replace(tmp, path)`` then publishes it atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``."""
    os.replace(write_temp(path, write), path)


def text_writer(text: str) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return write


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, text_writer(text))
