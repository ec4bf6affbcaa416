"""Class-indexed image collections: the one interface every few-shot dataset implements.

A ``ClassDataset`` is a list of classes, each with some images. The task sampler only
needs ``num_classes``, ``class_size(c)`` and ``images(c, indices)``, so a dataset can keep
its pixels in memory (small benchmarks) or read files on demand (user folders).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..images import IMAGE_SUFFIXES, ImageError, read_image


class DataError(ValueError):
    """Bad or missing data; the message names the file, folder, class or value at fault."""


class ClassDataset:
    """Abstract class-indexed image collection."""

    class_names: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W) of every returned image

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_size(self, c: int) -> int:
        raise NotImplementedError

    def images(self, c: int, indices: Sequence[int]) -> torch.Tensor:
        """Float images in [0, 1], shape (len(indices), C, H, W)."""
        raise NotImplementedError

    def check_episodes(self, n_way: int, shots_plus_queries: int, name: str = "dataset") -> None:
        """Raise a clear error if N-way tasks with K+Q images per class cannot be drawn."""
        if self.num_classes < n_way:
            raise DataError(
                f"{name}: {self.num_classes} classes, but {n_way}-way tasks need at least {n_way}"
            )
        for c in range(self.num_classes):
            if self.class_size(c) < shots_plus_queries:
                raise DataError(
                    f"{name}: class '{self.class_names[c]}' has {self.class_size(c)} images, "
                    f"but K+Q = {shots_plus_queries} are needed per class"
                )


class TensorClassDataset(ClassDataset):
    """All images in memory: one uint8 (or float) tensor of shape (n_c, C, H, W) per class."""

    def __init__(self, class_names: Sequence[str], per_class: Sequence[torch.Tensor]):
        if len(class_names) != len(per_class):
            raise DataError(f"{len(class_names)} class names for {len(per_class)} image tensors")
        if not per_class:
            raise DataError("a dataset needs at least one class")
        self.class_names = list(class_names)
        self._data = list(per_class)
        self.image_shape = tuple(self._data[0].shape[1:])  # type: ignore[assignment]
        for name, t in zip(self.class_names, self._data):
            if tuple(t.shape[1:]) != self.image_shape:
                raise DataError(f"class '{name}': image shape {tuple(t.shape[1:])} "
                                f"differs from {self.image_shape}")

    def class_size(self, c: int) -> int:
        return int(self._data[c].shape[0])

    def images(self, c: int, indices: Sequence[int]) -> torch.Tensor:
        x = self._data[c][list(indices)]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def subset(self, classes: Sequence[int]) -> TensorClassDataset:
        return TensorClassDataset([self.class_names[c] for c in classes],
                                  [self._data[c] for c in classes])


class RotatedClasses(ClassDataset):
    """Each (class, rotation) pair is a new class, as in the standard Omniglot protocol."""

    def __init__(self, base: ClassDataset, degrees: Sequence[int] = (0, 90, 180, 270)):
        for d in degrees:
            if d % 90:
                raise DataError(f"rotation {d} is not a multiple of 90 degrees")
        self.base = base
        self.degrees = list(degrees)
        self.class_names = [f"{n}@rot{d}" for n in base.class_names for d in self.degrees]
        self.image_shape = base.image_shape

    def class_size(self, c: int) -> int:
        return self.base.class_size(c // len(self.degrees))

    def images(self, c: int, indices: Sequence[int]) -> torch.Tensor:
        x = self.base.images(c // len(self.degrees), indices)
        k = self.degrees[c % len(self.degrees)] // 90
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


def load_image(path: str | os.PathLike | None, size: int | None, channels: int,
               data: bytes | None = None) -> np.ndarray:
    """Read one image file (or its bytes) to a uint8 array (C, H, W) by the rules of
    :mod:`metaprune.images`; DataError naming the file otherwise."""
    try:
        return read_image(path, channels, size, data)
    except ImageError as e:
        raise DataError(str(e)) from None


class FileClassDataset(ClassDataset):
    """Images read from files on demand (with an optional in-memory cache)."""

    def __init__(self, class_names: Sequence[str], files: Sequence[Sequence[Path]],
                 size: int | None, channels: int, cache: bool = True,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None):
        if not class_names:
            raise DataError("no classes found")
        self.class_names = list(class_names)
        self.files = [list(f) for f in files]
        self.channels = channels
        self.size = size
        self.transform = transform
        self._cache: dict[tuple[int, int], np.ndarray] | None = {} if cache else None
        if size is None:
            first = load_image(self.files[0][0], None, channels)
            self.image_shape = tuple(first.shape)  # type: ignore[assignment]
        else:
            self.image_shape = (channels, size, size)

    def class_size(self, c: int) -> int:
        return len(self.files[c])

    def _one(self, c: int, i: int) -> np.ndarray:
        if self._cache is not None and (c, i) in self._cache:
            return self._cache[(c, i)]
        arr = load_image(self.files[c][i], self.size, self.channels)
        if self.transform is not None:
            arr = self.transform(arr)
        if tuple(arr.shape) != self.image_shape:
            raise DataError(f"image '{self.files[c][i]}' has shape {arr.shape}, expected "
                            f"{self.image_shape} (set a resize size)")
        if self._cache is not None:
            self._cache[(c, i)] = arr
        return arr

    def images(self, c: int, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._one(c, i) for i in indices])).float().div_(255.0)


def dataset_dir(root: str | os.PathLike, dataset: str, subfolder: str) -> Path:
    """The dataset's folder: ``<root>/<subfolder>`` if present, else ``root`` itself."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{dataset}: data root '{root}' does not exist")
    sub = root / subfolder
    return sub if sub.is_dir() else root


def list_class_folders(root: Path, what: str = "dataset") -> tuple[list[str], list[list[Path]]]:
    """``root/<class>/<image>`` -> (class names, files per class), sorted; clear errors."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what}: folder '{root}' does not exist")
    names: list[str] = []
    files: list[list[Path]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if imgs:
            names.append(d.name)
            files.append(imgs)
    if not names:
        raise DataError(f"{what}: no class sub-folders with images in '{root}'")
    return names, files
