"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle split (64/16/20 classes).

Layout read (``root`` is the data root; ``<root>/mini-imagenet/`` is used if it exists, else
``root`` itself)::

    images/<file>.jpg + train.csv, val.csv, test.csv     (header "filename,label")

or, read directly without extracting, a zip in that folder (``mini-imagenet-100.zip``,
``mini-imagenet.zip`` or any other ``*.zip``) holding the same files, optionally under one top
folder (``mini-imagenet/images/...``, ``mini-imagenet/train.csv``). The extracted layout is
preferred when both exist. Images are RGB, resized to ``image_size`` (LANCZOS; 84 is the
native size) and kept in memory as uint8; decoded arrays are cached on disk. Classes are
sorted by label (WordNet id), images keep the CSV order.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import DataError, TensorClassDataset, dataset_dir, load_image
from .download import cached_arrays, source_signature

SPLITS = ("train", "val", "test")


def miniimagenet_dir(root: str | os.PathLike) -> Path:
    """The folder holding the data: ``<root>/mini-imagenet`` if present, else ``root``."""
    return dataset_dir(root, "miniimagenet", "mini-imagenet")


def parse_split_csv(text: str, where: str) -> list[tuple[str, str]]:
    """``filename,label`` rows (header required) -> [(filename, label)]."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"miniimagenet: '{where}' must start with the header 'filename,label'")
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"miniimagenet: '{where}' line {i}: expected 'filename,label', "
                            f"got {','.join(row)!r}")
        out.append((row[0].strip(), row[1].strip()))
    if not out:
        raise DataError(f"miniimagenet: '{where}' lists no images")
    return out


def _group(rows: list[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    by_label: dict[str, list[str]] = {}
    for fname, label in rows:
        by_label.setdefault(label, []).append(fname)
    labels = sorted(by_label)
    return labels, [by_label[lab] for lab in labels]


def _find_zip_prefix(zf: zipfile.ZipFile, split: str) -> str | None:
    """The folder prefix ('' or 'mini-imagenet/') under which ``<split>.csv`` lies."""
    for n in sorted(zf.namelist(), key=len):
        if n == f"{split}.csv" or n.endswith(f"/{split}.csv"):
            return n[: -len(f"{split}.csv")]
    return None


def _decode_zip(src: Path, split: str, image_size: int) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(src)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"miniimagenet: cannot open archive '{src}': {e}") from e
    with zf:
        prefix = _find_zip_prefix(zf, split)
        if prefix is None:
            raise DataError(f"miniimagenet: no '{split}.csv' in archive '{src}'")
        csv_name = f"{prefix}{split}.csv"
        labels, files = _group(parse_split_csv(zf.read(csv_name).decode("utf-8"),
                                               f"{src}:{csv_name}"))
        members = set(zf.namelist())
        images = []
        for per_class in files:
            for f in per_class:
                m = f"{prefix}images/{f}"
                if m not in members:
                    raise DataError(f"miniimagenet: '{src}:{csv_name}' lists '{f}' but "
                                    f"'{m}' is not in the archive")
                images.append(load_image(f"{src}:{m}", image_size, 3, data=zf.read(m)))
    return {"images": np.stack(images), "names": np.array(labels),
            "counts": np.array([len(f) for f in files], dtype=np.int64)}


def _decode_folder(folder: Path, split: str, image_size: int) -> dict[str, np.ndarray]:
    csv_path = folder / f"{split}.csv"
    labels, files = _group(parse_split_csv(csv_path.read_text(), str(csv_path)))
    images = []
    for per_class in files:
        for f in per_class:
            p = folder / "images" / f
            if not p.is_file():
                raise DataError(f"miniimagenet: '{csv_path}' lists '{f}' but '{p}' is missing")
            images.append(load_image(p, image_size, 3))
    return {"images": np.stack(images), "names": np.array(labels),
            "counts": np.array([len(f) for f in files], dtype=np.int64)}


def miniimagenet(root: str | os.PathLike, split: str = "train", *, image_size: int = 84,
                 cache_dir: str | os.PathLike | None = None,
                 disk_cache: bool = True) -> TensorClassDataset:
    """One mini-ImageNet split as an in-memory uint8 dataset (see the module docstring)."""
    if split not in SPLITS:
        raise DataError(f"miniimagenet: unknown split '{split}' (choose from {list(SPLITS)})")
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"miniimagenet: image_size must be a positive integer, "
                        f"got {image_size!r}")
    folder = miniimagenet_dir(root)
    csv_path = folder / f"{split}.csv"
    if csv_path.is_file() and (folder / "images").is_dir():
        key = {"source": [source_signature(csv_path), source_signature(folder / "images")],
               "split": split, "image_size": image_size}
        arrays = cached_arrays(f"miniimagenet-{split}-{image_size}", key,
                               lambda: _decode_folder(folder, split, image_size),
                               cache_dir, disk_cache)
    else:
        zips = sorted(folder.glob("*.zip"),
                      key=lambda p: (p.name not in ("mini-imagenet-100.zip",
                                                    "mini-imagenet.zip"), p.name))
        if not zips:
            raise DataError(f"miniimagenet: found neither '{csv_path}' with an 'images/' "
                            f"folder nor a .zip archive in '{folder}'")
        src = zips[0]
        key = {"source": source_signature(src), "split": split, "image_size": image_size}
        arrays = cached_arrays(f"miniimagenet-{split}-{image_size}", key,
                               lambda: _decode_zip(src, split, image_size),
                               cache_dir, disk_cache)
    images = torch.from_numpy(arrays["images"])
    counts = [int(c) for c in arrays["counts"]]
    return TensorClassDataset([str(n) for n in arrays["names"]], list(torch.split(images, counts)))
