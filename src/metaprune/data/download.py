"""Data files: checksums, the opt-in Omniglot downloader, and the decoded-array disk cache.

Nothing here is called implicitly: loaders never download. ``download_omniglot`` is opt-in and
fetches the official archives from the brendenlake/omniglot GitHub repository.

The disk cache stores decoded uint8 arrays as ``.npz`` (no pickle; always read with
``allow_pickle=False``) keyed by the source file's name, size and modification time plus the
decode options, so an edited or replaced archive is decoded afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ..io import sha256_file as io_sha256_file
from .base import DataError

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}"

# Accepted sha256 of each Omniglot archive. "official": the archives as published in
# brendenlake/omniglot (python/), checksums as registered by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/omniglot.txt; the official MD5s used by torchvision are
# 68d2efa1b9178cc56df9314c21c6e718 and 6b91aef0f799c5bb55b94e3f2daec811). "repacked": the
# byte-identical re-packed copies described in the project's shared data README.
OMNIGLOT_SHA256: dict[str, dict[str, str]] = {
    "images_background.zip": {
        "official": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        "repacked": "c30fd743c036483ea75fea665651d33e7d8e7d1436672d4e1e9f7c632897175e",
    },
    "images_evaluation.zip": {
        "official": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
        "repacked": "c7a1c1cb1c15713eed953c1be75913ede32760230340a3c1f8738bbfb627864c",
    },
}

CACHE_VERSION = 1


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes; DataError naming the file if it cannot be read."""
    try:
        return io_sha256_file(path)
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e}") from e


def verify_sha256(path: str | os.PathLike, accepted: Iterable[str]) -> str:
    """Return the file's sha256 if it is one of ``accepted``; else DataError naming the file."""
    digest = sha256_file(path)
    accepted = [a.lower() for a in accepted]
    if digest not in accepted:
        raise DataError(f"checksum mismatch for '{path}': sha256 {digest}, expected one of "
                        f"{', '.join(accepted)} (corrupt or wrong file; delete it and retry)")
    return digest


def verify_omniglot_archive(path: str | os.PathLike) -> str:
    """Check an Omniglot archive against the official and the re-packed checksums."""
    name = Path(path).name
    if name not in OMNIGLOT_SHA256:
        raise DataError(f"'{path}': unknown Omniglot archive name '{name}' "
                        f"(expected one of {sorted(OMNIGLOT_SHA256)})")
    return verify_sha256(path, OMNIGLOT_SHA256[name].values())


def download_omniglot(root: str | os.PathLike, force: bool = False,
                      timeout: float = 60.0) -> list[Path]:
    """Fetch the official Omniglot archives into ``<root>/omniglot/`` and verify them.

    Opt-in (never called by loaders or tests). Existing archives with a valid checksum are kept
    unless ``force``. Each file is written atomically, then verified; a bad download is deleted.
    """
    dest = Path(root) / "omniglot"
    out: list[Path] = []
    for name in OMNIGLOT_SHA256:
        path = dest / name
        if path.exists() and not force:
            try:
                verify_omniglot_archive(path)
                out.append(path)
                continue
            except DataError:
                pass  # re-download below
        url = OMNIGLOT_URL.format(name=name)

        def write(tmp: str, url: str = url, name: str = name) -> None:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                    while block := r.read(1 << 20):
                        f.write(block)
            except OSError as e:  # URLError is an OSError
                raise DataError(f"cannot download '{url}': {e}") from e
            digest = sha256_file(tmp)
            if digest not in OMNIGLOT_SHA256[name].values():
                raise DataError(f"checksum mismatch for '{url}': sha256 {digest}, expected one "
                                f"of {', '.join(OMNIGLOT_SHA256[name].values())}")

        atomic_write(path, write)
        out.append(path)
    return out


# ----------------------------------------------------------------------------- disk cache

def default_cache_dir() -> Path:
    """``$METAPRUNE_CACHE`` if set, else ``~/.cache/metaprune``."""
    env = os.environ.get("METAPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metaprune"


def source_signature(path: Path) -> list:
    """Cheap change detection: a file's name, size and mtime; for a folder, a digest of the
    relative path, size and mtime of every file below it (no file is read)."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return [path.name, "dir", h.hexdigest()]
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def cached_arrays(kind: str, key: dict, build: Callable[[], dict[str, np.ndarray]],
                  cache_dir: str | os.PathLike | None = None,
                  enabled: bool = True) -> dict[str, np.ndarray]:
    """Load the arrays for ``(kind, key)`` from the cache, or ``build()`` and store them.

    ``key`` must be JSON-serialisable and change whenever the decoded result would. A corrupt
    or unreadable cache file is ignored (rebuilt); an unwritable cache dir only warns.
    """
    if not enabled:
        return build()
    blob = json.dumps({"v": CACHE_VERSION, "kind": kind, "key": key}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = path / f"{kind}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            warnings.warn(f"ignoring unreadable cache file '{path}': {e}", stacklevel=2)
    arrays = build()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        atomic_write(path, write)
    except OSError as e:
        warnings.warn(f"cannot write cache file '{path}': {e}", stacklevel=2)
    return arrays
