"""Omniglot (Lake et al. 2015) from the official archives or their extracted folders.

Layout read (``root`` is the data root; ``<root>/omniglot/`` is used if it exists, else
``root`` itself must hold the files)::

    images_background.zip   or  images_background/<Alphabet>/characterNN/<id>_<drawer>.png
    images_evaluation.zip   or  images_evaluation/<Alphabet>/characterNN/<id>_<drawer>.png

The zip is preferred when both exist. Images are converted to grayscale, resized to
``image_size`` (LANCZOS) and inverted so that strokes are bright (255) on a black (0)
background, like the glyphs dataset. Class names are ``"<Alphabet>/characterNN"``.

Splits: ``background`` (all 30 background alphabets), ``val`` (``val_alphabets`` alphabets of
the background set chosen with ``seed``), ``train`` (background minus val), ``test`` /
``evaluation`` (the 20 evaluation alphabets). Alphabets never cross train/val/test.
Decoding all 32,460 PNGs takes a few seconds, so the decoded arrays are cached on disk (see
``download.cached_arrays``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import (
    ClassDataset,
    DataError,
    RotatedClasses,
    TensorClassDataset,
    dataset_dir,
    load_image,
)
from .download import cached_arrays, source_signature

PARTS = {"background": "images_background", "evaluation": "images_evaluation"}
SPLITS = ("background", "train", "val", "test", "evaluation")


def omniglot_dir(root: str | os.PathLike) -> Path:
    """The folder holding the data: ``<root>/omniglot`` if present, else ``root``."""
    return dataset_dir(root, "omniglot", "omniglot")


def _group(entries: list[tuple[str, str, str, object]], where: str
           ) -> tuple[list[str], list[list[object]]]:
    """(alphabet, character, file name, handle) -> sorted class names and handles per class."""
    classes: dict[str, list[tuple[str, object]]] = {}
    for alphabet, character, fname, handle in entries:
        classes.setdefault(f"{alphabet}/{character}", []).append((fname, handle))
    if not classes:
        raise DataError(f"omniglot: no '<Alphabet>/<character>/*.png' images in '{where}'")
    names = sorted(classes)
    return names, [[h for _, h in sorted(classes[n], key=lambda t: t[0])] for n in names]


def _decode_part(src: Path, image_size: int) -> dict[str, np.ndarray]:
    """Decode one archive (or extracted folder) to uint8 images (N, S, S), names and counts."""
    images: list[np.ndarray] = []
    if src.suffix == ".zip":
        try:
            zf = zipfile.ZipFile(src)
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"omniglot: cannot open archive '{src}': {e}") from e
        with zf:
            entries = []
            for info in zf.infolist():
                parts = info.filename.rstrip("/").split("/")
                if not info.is_dir() and len(parts) >= 3 and parts[-1].lower().endswith(".png"):
                    entries.append((parts[-3], parts[-2], parts[-1], info.filename))
            names, members = _group(entries, str(src))
            for per_class in members:
                for m in per_class:
                    try:
                        data = zf.read(str(m))
                    except (OSError, zipfile.BadZipFile) as e:
                        raise DataError(f"omniglot: cannot read '{src}:{m}': {e}") from e
                    images.append(load_image(f"{src}:{m}", image_size, 1, data=data)[0])
    else:
        entries = [(p.parent.parent.name, p.parent.name, p.name, p)
                   for p in src.glob("*/*/*") if p.suffix.lower() == ".png"]
        names, members = _group(entries, str(src))
        for per_class in members:
            for p in per_class:
                images.append(load_image(p, image_size, 1)[0])  # type: ignore[arg-type]
    arr = 255 - np.stack(images)  # strokes bright on black
    return {"images": arr.astype(np.uint8), "names": np.array(names),
            "counts": np.array([len(m) for m in members], dtype=np.int64)}


def _part_source(folder: Path, part: str) -> Path:
    stem = PARTS[part]
    for cand in (folder / f"{stem}.zip", folder / stem):
        if cand.exists():
            return cand
    raise DataError(f"omniglot: neither '{folder / (stem + '.zip')}' nor the extracted folder "
                    f"'{folder / stem}' exists")


def load_part(root: str | os.PathLike, part: str, image_size: int = 28,
              cache_dir: str | os.PathLike | None = None, disk_cache: bool = True
              ) -> TensorClassDataset:
    """One official part ("background" or "evaluation") as an in-memory uint8 dataset."""
    if part not in PARTS:
        raise DataError(f"omniglot: unknown part '{part}' (choose from {sorted(PARTS)})")
    src = _part_source(omniglot_dir(root), part)
    key = {"source": source_signature(src), "image_size": image_size}
    arrays = cached_arrays(f"omniglot-{part}-{image_size}", key,
                           lambda: _decode_part(src, image_size), cache_dir, disk_cache)
    images = torch.from_numpy(arrays["images"])[:, None]  # (N, 1, S, S)
    counts = [int(c) for c in arrays["counts"]]
    return TensorClassDataset([str(n) for n in arrays["names"]],
                              list(torch.split(images, counts)))


def alphabets(dataset: ClassDataset) -> list[str]:
    """Sorted alphabet names of an Omniglot dataset (class names are "Alphabet/character")."""
    return sorted({n.split("/")[0] for n in dataset.class_names})


def val_alphabet_names(all_alphabets: Sequence[str], val_alphabets: int, seed: int) -> list[str]:
    """The alphabets carved out as validation: a seeded choice from the sorted list."""
    pool = sorted(all_alphabets)
    if not 0 <= val_alphabets < len(pool):
        raise DataError(f"omniglot: val_alphabets={val_alphabets} must be in "
                        f"[0, {len(pool) - 1}] (background has {len(pool)} alphabets)")
    idx = np.random.default_rng(seed).choice(len(pool), val_alphabets, replace=False)
    return sorted(pool[int(i)] for i in idx)


def omniglot(root: str | os.PathLike, split: str = "background", *, image_size: int = 28,
             rotations: bool = False, val_alphabets: int = 5, seed: int = 0,
             cache_dir: str | os.PathLike | None = None,
             disk_cache: bool = True) -> ClassDataset:
    """One Omniglot split (see the module docstring).

    ``rotations``: each class also appears rotated by 90/180/270 degrees as 3 new classes.
    ``cache_dir``: where decoded arrays are cached (default ``$METAPRUNE_CACHE`` or
    ``~/.cache/metaprune``); ``disk_cache=False`` always decodes.
    """
    if split not in SPLITS:
        raise DataError(f"omniglot: unknown split '{split}' (choose from {list(SPLITS)})")
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"omniglot: image_size must be a positive integer, got {image_size!r}")
    if not isinstance(rotations, bool):
        raise DataError(f"omniglot: rotations must be true or false, got {rotations!r}")
    for label, v in (("val_alphabets", val_alphabets), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise DataError(f"omniglot: {label} must be an integer, got {v!r}")
    part = "evaluation" if split in ("test", "evaluation") else "background"
    ds = load_part(root, part, image_size, cache_dir, disk_cache)
    if split in ("train", "val"):
        val = set(val_alphabet_names(alphabets(ds), val_alphabets, seed))
        keep = [i for i, n in enumerate(ds.class_names)
                if (n.split("/")[0] in val) == (split == "val")]
        if not keep:
            raise DataError(f"omniglot: split '{split}' is empty (val_alphabets={val_alphabets})")
        ds = ds.subset(keep)
    return RotatedClasses(ds) if rotations else ds
