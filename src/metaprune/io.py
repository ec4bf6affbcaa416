"""Atomic file writes (a crash never leaves a half-written checkpoint or result) and file
digests."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path


def with_extension(stem: str | os.PathLike, ext: str) -> Path:
    """``stem`` + ``ext`` (``runs/mem0.5`` + ``.md`` -> ``runs/mem0.5.md``): unlike
    ``Path.with_suffix``, a dot inside the name is kept, not taken for a suffix."""
    stem = Path(stem)
    return stem.parent / (stem.name + ext)


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (OSError if it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (its ``.lock`` file) for the block; a
    second holder is refused at once. The OS releases the lock when its process dies, so a
    killed run never leaves the folder locked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise FolderInUseError(f"'{folder}' is in use by {owner}: wait for it to finish, "
                                   "or use another --out") from None
        except OSError as e:  # a filesystem without flock (some network filesystems)
            warnings.warn(f"cannot lock '{folder}' ({e}): two jobs there at once would not "
                          "be detected", stacklevel=3)
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
