"""Reading one image file the same way everywhere (training data, the device runtime).

Rules, in order:

* only regular files are opened (a FIFO or device named ``x.png`` would block for ever);
* the header is read first and images over ``MAX_PIXELS`` are refused before decoding
  (decompression bombs);
* transparency is composited onto WHITE: a transparent pixel is blank paper, so black strokes
  on a transparent background read as black strokes on white (as Omniglot's images are);
* 16-bit and 32-bit integer images are scaled to 8 bits (value / 257), not clipped; float
  images are taken as 0-255 and clipped;
* then converted to grey (1 channel) or RGB (3) and resized to ``size`` x ``size`` (Lanczos).

Imports only numpy, Pillow and the stdlib: the device runtime uses it.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 50_000_000   # width x height; larger images are refused before decoding


class ImageError(ValueError):
    """An image that cannot be used; the message names the file."""


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        high = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else \
            float(arr.max())
        return Image.fromarray(np.clip(np.rint(arr * 255.0 / high), 0, 255).astype(np.uint8))
    if im.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8))
    return im


def _flatten_alpha(im: Image.Image) -> Image.Image:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
    return im


def read_image(path: str | os.PathLike | None, channels: int, size: int | None,
               data: bytes | None = None) -> np.ndarray:
    """One image file (or its bytes, ``data``) -> uint8 array (C, H, W) by the rules above;
    ImageError naming the file otherwise."""
    name = path if path is not None else "<bytes>"
    if data is None:
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            raise ImageError(f"cannot read image '{name}': {e}") from None
        if not stat.S_ISREG(mode):
            raise ImageError(f"'{name}' is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else Path(path)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"image '{name}' is {im.width} x {im.height} pixels, "
                                     f"over the limit of {MAX_PIXELS:,}")
                im.load()
                im = _flatten_alpha(_to_8bit(im))
                im = im.convert("L" if channels == 1 else "RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.LANCZOS)
                arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"cannot read image '{name}': {e}") from None
    return arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()
