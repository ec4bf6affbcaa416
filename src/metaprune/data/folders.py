"""Folder-based datasets, read from files on demand: a generic folder, CIFAR-FS, FC100, CUB.

Layouts read (``root`` is the data root):

- ``image_folder``: ``<folder>/<class>/<image>`` (any of ``base.IMAGE_SUFFIXES``).
- CIFAR-FS (Bertinetto et al. 2019): ``<root>/cifar-fs/data/<class>/*.png`` and
  ``<root>/cifar-fs/splits/bertinetto/{train,val,test}.txt``, one class name per line
  (64/16/20 classes of CIFAR-100, 600 32x32 images each).
- FC100 (Oreshkin et al. 2018): ``<root>/fc100/{train,val,test}/<class>/*.png``
  (60/20/20 classes of CIFAR-100 split by superclass, 32x32).
- CUB-200-2011: ``<root>/cub/images/<class>/*.jpg`` (the official ``CUB_200_2011/images``
  folder; ``<root>/cub/CUB_200_2011/images`` is also accepted). The 200 class folders are
  sorted by name (``001.Black_footed_Albatross`` ... ``200.Common_Yellowthroat``) and split
  100/50/50: the first 100 are train, the next 50 val, the last 50 test (the split of
  Hilliard et al. 2018 / Chen et al. 2019). Exactly 200 classes are required.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import DataError, FileClassDataset, list_class_folders

SPLITS = ("train", "val", "test")
CUB_SPLIT = {"train": (0, 100), "val": (100, 150), "test": (150, 200)}


def _check(what: str, split: str | None, image_size: int | None, channels: int) -> None:
    if split is not None and split not in SPLITS:
        raise DataError(f"{what}: unknown split '{split}' (choose from {list(SPLITS)})")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"{what}: image_size must be a positive integer or None, "
                        f"got {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"{what}: channels must be 1 or 3, got {channels!r}")


def _dataset_dir(root: str | os.PathLike, sub: str, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what}: data root '{root}' does not exist")
    d = root / sub
    if not d.is_dir():
        raise DataError(f"{what}: folder '{d}' does not exist (expected the layout documented "
                        f"in metaprune.data.folders)")
    return d


def image_folder(folder: str | os.PathLike, *, image_size: int | None = None,
                 channels: int = 3, memory_cache: bool = True) -> FileClassDataset:
    """``<folder>/<class>/<image>``; ``image_size=None`` keeps the native size (must agree)."""
    _check("folder", None, image_size, channels)
    names, files = list_class_folders(Path(folder).expanduser(), "folder")
    return FileClassDataset(names, files, image_size, channels, cache=memory_cache)


def cifarfs(root: str | os.PathLike, split: str = "train", *, image_size: int = 32,
            channels: int = 3, memory_cache: bool = True) -> FileClassDataset:
    """CIFAR-FS: classes listed in ``splits/bertinetto/<split>.txt``, images in ``data/``."""
    _check("cifarfs", split, image_size, channels)
    base = _dataset_dir(root, "cifar-fs", "cifarfs")
    split_file = base / "splits" / "bertinetto" / f"{split}.txt"
    try:
        listed = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise DataError(f"cifarfs: cannot read split file '{split_file}': {e}") from e
    if not listed:
        raise DataError(f"cifarfs: split file '{split_file}' lists no classes")
    files = []
    for name in listed:
        d = base / "data" / name
        imgs = sorted(d.glob("*.png")) if d.is_dir() else []
        if not imgs:
            raise DataError(f"cifarfs: class '{name}' (listed in '{split_file}') has no "
                            f"images: '{d}/*.png'")
        files.append(imgs)
    return FileClassDataset(listed, files, image_size, channels, cache=memory_cache)


def fc100(root: str | os.PathLike, split: str = "train", *, image_size: int = 32,
          channels: int = 3, memory_cache: bool = True) -> FileClassDataset:
    """FC100: ``<root>/fc100/<split>/<class>/*.png``."""
    _check("fc100", split, image_size, channels)
    d = _dataset_dir(root, f"fc100/{split}", "fc100")
    names, files = list_class_folders(d, "fc100")
    return FileClassDataset(names, files, image_size, channels, cache=memory_cache)


def cub(root: str | os.PathLike, split: str = "train", *, image_size: int = 84,
        channels: int = 3, memory_cache: bool = True) -> FileClassDataset:
    """CUB-200-2011 with the 100/50/50 split by sorted class-folder order."""
    _check("cub", split, image_size, channels)
    base = _dataset_dir(root, "cub", "cub")
    images = base / "images"
    if not images.is_dir() and (base / "CUB_200_2011" / "images").is_dir():
        images = base / "CUB_200_2011" / "images"
    names, files = list_class_folders(images, "cub")
    if len(names) != 200:
        raise DataError(f"cub: '{images}' has {len(names)} class folders with images; the "
                        f"standard 100/50/50 split needs exactly 200")
    lo, hi = CUB_SPLIT[split]
    return FileClassDataset(names[lo:hi], files[lo:hi], image_size, channels,
                            cache=memory_cache)
