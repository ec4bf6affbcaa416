"""Image files are read by one set of rules (metaprune.images), for training and the device."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

import metaprune.images as images
from metaprune.data.base import DataError, load_image
from metaprune.data.download import cached_arrays
from metaprune.images import ImageError, read_image


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    got = read_image(path, 1, None)[0].astype(int)
    expected = np.rint(ramp * 255.0 / 65535).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert (got == 255).mean() < 0.01  # clipping saturated 99.5% of this ramp


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_onto_white(tmp_path, mode):
    im = Image.new(mode, (8, 8), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    for i in range(8):  # an opaque black diagonal stroke on a transparent black background
        im.putpixel((i, i), (0, 0, 0, 255) if mode == "RGBA" else (0, 255))
    path = tmp_path / f"stroke_{mode}.png"
    im.save(path)
    for channels in (1, 3):
        arr = read_image(path, channels, None)
        diag = np.eye(8, dtype=bool)
        assert (arr[:, diag] == 0).all() and (arr[:, ~diag] == 255).all()


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (40, 30)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"big.png' is 40 x 30 pixels, over the limit"):
        read_image(path, 1, 28)
    with pytest.raises(DataError, match="big.png"):  # the data loaders' error type
        load_image(path, 28, 1)


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="pipe.png' is not a regular file"):
        read_image(fifo, 1, 28)


def test_unreadable_images_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageError, match="bad.png"):
        read_image(bad, 1, 28)


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    build = lambda: {"x": np.arange(1000)}  # noqa: E731
    first = cached_arrays("t", {"k": 1}, build, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("t-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:50])  # truncated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = cached_arrays("t", {"k": 1}, build, cache_dir=tmp_path)
    assert np.array_equal(first["x"], again["x"])
    assert any("ignoring unreadable cache file" in str(w.message) for w in caught)
    with np.load(cache_file) as z:  # rewritten whole
        assert np.array_equal(z["x"], first["x"])
