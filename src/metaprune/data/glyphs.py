"""The embedded default dataset: procedurally generated "glyphs".

Each class is a random character made of 1-4 pen strokes (smooth curves through random control
points). Each sample is that character redrawn by a different "drawer": control points jittered,
the whole glyph slightly rotated, scaled and shifted, and the pen width varied, much like
Omniglot's 20 drawers per character. Everything is generated in-process from a seed: no
download, identical on every machine.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .base import DataError, TensorClassDataset
from .download import cached_arrays

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_CLASSES = {"train": 480, "val": 80, "test": 160}
GENERATOR_VERSION = 1  # bump when the drawing code changes (it keys the disk cache)


def _curve(points: np.ndarray, n: int = 24) -> np.ndarray:
    """Quadratic B-spline-like smoothing of a control polygon (Chaikin subdivision)."""
    pts = points
    for _ in range(3):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        pts = np.concatenate([pts[:1], np.stack([q, r], 1).reshape(-1, 2), pts[-1:]])
    return pts


def _character(rng: np.random.Generator) -> list[np.ndarray]:
    strokes = []
    for _ in range(int(rng.integers(1, 5))):
        n_ctrl = int(rng.integers(2, 5))
        start = rng.uniform(0.15, 0.85, size=2)
        steps = rng.normal(0.0, 0.28, size=(n_ctrl - 1, 2))
        strokes.append(np.clip(np.concatenate([start[None], start + np.cumsum(steps, 0)]),
                               0.1, 0.9))
    return strokes


def _draw(strokes: list[np.ndarray], rng: np.random.Generator, size: int,
          jitter: float) -> np.ndarray:
    scale = 4  # draw large, then downsample: anti-aliased strokes
    big = size * scale
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    angle = rng.normal(0.0, 0.12 * jitter / 0.03)
    zoom = 1.0 + rng.normal(0.0, 0.06)
    shift = rng.normal(0.0, 0.04, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    width = max(1, int(round(big * rng.uniform(0.05, 0.08))))
    for s in strokes:
        p = s + rng.normal(0.0, jitter, size=s.shape)
        p = (p - 0.5) @ rot.T * zoom + 0.5 + shift
        line = [tuple(xy) for xy in (_curve(p) * big)]
        draw.line(line, fill=255, width=width, joint="curve")
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def glyphs(split: str = "train", num_classes: int | None = None, samples_per_class: int = 20,
           image_size: int = 28, seed: int = 0, jitter: float = 0.03) -> TensorClassDataset:
    """Generate one split of the glyphs dataset; class sets of different splits are disjoint."""
    if split not in SPLITS:
        raise DataError(f"glyphs: unknown split '{split}' (choose from {sorted(SPLITS)})")
    n = DEFAULT_CLASSES[split] if num_classes is None else num_classes
    if n < 1 or samples_per_class < 1:
        raise DataError(f"glyphs: need >= 1 class and sample, got {n} and {samples_per_class}")

    def build() -> dict[str, np.ndarray]:
        per_class = []
        for c in range(n):
            rng = np.random.default_rng([seed, SPLITS[split], c])
            strokes = _character(rng)
            per_class.append(np.stack([_draw(strokes, rng, image_size, jitter)
                                       for _ in range(samples_per_class)]))
        return {"images": np.stack(per_class)}

    # generated once per machine, then read from the disk cache like the real datasets
    key = {"split": split, "classes": n, "samples": samples_per_class, "size": image_size,
           "seed": seed, "jitter": jitter, "generator": GENERATOR_VERSION}
    images = cached_arrays("glyphs", key, build)["images"]
    return TensorClassDataset([f"glyph{SPLITS[split]}_{c:04d}" for c in range(n)],
                              [torch.from_numpy(images[c])[:, None] for c in range(n)])
