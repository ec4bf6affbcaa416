"""One entry point for every dataset: ``get_dataset(name, split, root, **options)``.

The data root is never hard-coded: it is the ``root`` argument, else the ``METAPRUNE_DATA``
environment variable (a folder laid out like ``<root>/omniglot/images_background.zip``,
``<root>/mini-imagenet/...``, see each loader's docstring). "glyphs" is generated in-process
and needs no root.

Options per dataset (keyword arguments of the loader):

- glyphs: num_classes, samples_per_class, image_size=28, seed=0, jitter=0.03
- omniglot: image_size=28, rotations=False, val_alphabets=5, seed=0, cache_dir, disk_cache
- miniimagenet: image_size=84, cache_dir, disk_cache
- folder: image_size=None, channels=3, memory_cache (split: a sub-folder of root, or "all")
- cifarfs, fc100: image_size=32, channels=3, memory_cache
- cub: image_size=84, channels=3, memory_cache
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import ClassDataset, DataError
from .folders import cifarfs, cub, fc100, image_folder
from .glyphs import glyphs
from .miniimagenet import miniimagenet
from .omniglot import omniglot

ENV_VAR = "METAPRUNE_DATA"


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """``root`` if given, else ``$METAPRUNE_DATA``; it must be an existing folder."""
    if root is None or str(root) == "":
        env = os.environ.get(ENV_VAR)
        if not env:
            raise DataError(f"no data root: pass the 'root' option (data.root in a config, "
                            f"--root on the command line) or set the {ENV_VAR} "
                            f"environment variable")
        path, origin = Path(env).expanduser(), f"{ENV_VAR}={env}"
    else:
        path, origin = Path(root).expanduser(), "root option"
    if not path.is_dir():
        raise DataError(f"data root '{path}' (from the {origin}) does not exist or is not "
                        f"a folder")
    return path


def _glyphs(root: Path | None, split: str, *, num_classes: int | None = None,
            samples_per_class: int = 20, image_size: int = 28, seed: int = 0,
            jitter: float = 0.03) -> ClassDataset:
    return glyphs(split, num_classes, samples_per_class, image_size, seed, jitter)


def _folder(root: Path | None, split: str, *, image_size: int | None = None,
            channels: int = 3, memory_cache: bool = True) -> ClassDataset:
    assert root is not None
    if split == "all":
        folder = root
    else:
        folder = root / split
        if not folder.is_dir():
            subs = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataError(f"folder: split '{split}' is not a sub-folder of '{root}' "
                            f"(sub-folders: {subs}; use split 'all' for '<root>/<class>/...')")
    return image_folder(folder, image_size=image_size, channels=channels,
                        memory_cache=memory_cache)


# name -> (loader(root, split, **options), valid splits or None for any, needs a root)
DATASETS: dict[str, tuple[Callable[..., ClassDataset], tuple[str, ...] | None, bool]] = {
    "glyphs": (_glyphs, ("train", "val", "test"), False),
    "omniglot": (omniglot, ("background", "train", "val", "test", "evaluation"), True),
    "miniimagenet": (miniimagenet, ("train", "val", "test"), True),
    "folder": (_folder, None, True),
    "cifarfs": (cifarfs, ("train", "val", "test"), True),
    "fc100": (fc100, ("train", "val", "test"), True),
    "cub": (cub, ("train", "val", "test"), True),
}


def dataset_options(name: str) -> dict[str, Any]:
    """Option names of a dataset and their defaults."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (choose from {sorted(DATASETS)})")
    params = inspect.signature(DATASETS[name][0]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_dataset(name: str, split: str, root: str | os.PathLike | None = None,
                **options: Any) -> ClassDataset:
    """Load one split of a dataset; every bad name, split, option or file is a DataError."""
    valid = dataset_options(name)
    loader, splits, needs_root = DATASETS[name]
    if splits is not None and split not in splits:
        raise DataError(f"{name}: unknown split '{split}' (choose from {list(splits)})")
    bad = sorted(set(options) - set(valid))
    if bad:
        raise DataError(f"{name}: unknown option(s) {bad} (valid options: {sorted(valid)})")
    path = resolve_data_root(root) if needs_root else None
    return loader(path, split, **options)
