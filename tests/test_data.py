"""Data layer: task sampling, splits, loaders on generated trees, errors, real data if present."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaprune.data import (
    DataError,
    OffsetSampler,
    RotatedClasses,
    TaskList,
    TaskSampler,
    TensorClassDataset,
    dataset_options,
    get_dataset,
    glyphs,
    resolve_data_root,
    sha256_file,
    verify_omniglot_archive,
    verify_sha256,
)
from metaprune.data.omniglot import alphabets, omniglot


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty decode cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("METAPRUNE_CACHE", str(cache))
    return cache


def _png(path: Path, value: int | tuple[int, int, int], size: int = 8, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- task sampling

def test_sampler_deterministic_from_seed() -> None:
    ds = glyphs("train", num_classes=12, samples_per_class=6, image_size=12)
    a = TaskSampler(ds, 5, 1, 3, seed=7).fixed_specs(6)
    b = TaskSampler(ds, 5, 1, 3, seed=7).fixed_specs(6)
    c = TaskSampler(ds, 5, 1, 3, seed=8).fixed_specs(6)
    assert a == b
    assert a != c
    t1, t2 = TaskSampler(ds, 5, 1, 3, seed=7).task(3), TaskSampler(ds, 5, 1, 3, seed=7).task(3)
    assert torch.equal(t1.support_x, t2.support_x) and torch.equal(t1.query_x, t2.query_x)


def test_offset_sampler_is_a_shifted_view() -> None:
    ds = glyphs("train", num_classes=12, samples_per_class=6, image_size=12)
    base = TaskSampler(ds, 5, 1, 3, seed=7)
    view = OffsetSampler(OffsetSampler(base, 100), 20)  # offsets add up
    got = view.batch(3, 4)
    want = base.batch(123, 4)
    assert [t.spec for t in got] == [t.spec for t in want]
    assert got[0].spec != base.task(3).spec
    assert all(torch.equal(a.query_x, b.query_x) for a, b in zip(got, want, strict=True))
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="offset"):
            OffsetSampler(base, bad)  # type: ignore[arg-type]


def test_support_query_disjoint_and_shapes() -> None:
    ds = glyphs("train", num_classes=10, samples_per_class=8, image_size=12)
    sampler = TaskSampler(ds, 4, 2, 5, seed=1)
    for i in range(20):
        spec = sampler.spec(i)
        assert len(set(spec.classes)) == 4
        for s, q in zip(spec.support, spec.query, strict=True):
            assert len(s) == 2 and len(q) == 5
            assert not set(s) & set(q)
        task = sampler.task(i)
        assert task.support_x.shape == (8, 1, 12, 12) and task.query_x.shape == (20, 1, 12, 12)
        assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert task.query_y.tolist() == [c for c in range(4) for _ in range(5)]


def test_glyph_splits_disjoint() -> None:
    splits = {s: glyphs(s, num_classes=5, samples_per_class=2, image_size=12)
              for s in ("train", "val", "test")}
    names = {s: set(d.class_names) for s, d in splits.items()}
    assert not names["train"] & names["val"]
    assert not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    # same class index, different split -> different character
    assert not torch.equal(splits["train"].images(0, [0]), splits["val"].images(0, [0]))


def test_tasklist_roundtrip_and_fingerprint(tmp_path: Path) -> None:
    ds = glyphs("val", num_classes=8, samples_per_class=5, image_size=12)
    specs = TaskSampler(ds, 3, 1, 2, seed=4).fixed_specs(5)
    tl = TaskList(specs, {"split": "val", "seed": 4})
    path = tmp_path / "tasks.json"
    tl.save(path)
    back = TaskList.load(path)
    assert back.specs == specs
    assert back.meta == {"split": "val", "seed": 4}
    assert back.fingerprint() == tl.fingerprint()
    assert TaskList(TaskSampler(ds, 3, 1, 2, seed=5).fixed_specs(5)).fingerprint() \
        != tl.fingerprint()
    for a, b in zip(tl.tasks(ds), back.tasks(ds), strict=True):
        assert torch.equal(a.query_x, b.query_x)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        TaskList.load(bad)


# ----------------------------------------------------------------------------- errors

def test_too_few_classes() -> None:
    ds = glyphs("train", num_classes=3, samples_per_class=4, image_size=12)
    with pytest.raises(DataError, match=r"3 classes, but 5-way"):
        TaskSampler(ds, 5, 1, 1, name="tiny")


def test_class_with_too_few_images(tmp_path: Path) -> None:
    for c, n in (("cat", 5), ("dog", 2), ("emu", 5)):
        for i in range(n):
            _png(tmp_path / "imgs" / c / f"{i}.png", 100)
    ds = get_dataset("folder", "all", tmp_path / "imgs", channels=1)
    with pytest.raises(DataError, match=r"class 'dog' has 2 images, but K\+Q = 4"):
        TaskSampler(ds, 2, 1, 3)


def test_corrupt_image_named(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", 10)
    (tmp_path / "a" / "1.png").write_bytes(b"this is not a png")
    _png(tmp_path / "b" / "0.png", 20)
    ds = get_dataset("folder", "all", tmp_path, image_size=8)
    with pytest.raises(DataError, match=r"1\.png"):
        ds.images(0, [0, 1])


def test_missing_root_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    for name in ("omniglot", "miniimagenet", "cifarfs", "fc100", "cub", "folder"):
        split = "all" if name == "folder" else "train"
        with pytest.raises(DataError) as e:
            get_dataset(name, split, missing)
        assert str(missing) in str(e.value), name
    # root exists but the dataset folder does not
    with pytest.raises(DataError, match=str(tmp_path / "cifar-fs")):
        get_dataset("cifarfs", "train", tmp_path)


def test_unknown_name_split_option() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'.*omniglot"):
        get_dataset("imagenet", "train")
    with pytest.raises(DataError, match=r"unknown split 'training'.*'train', 'val', 'test'"):
        get_dataset("glyphs", "training")
    with pytest.raises(DataError, match=r"unknown option\(s\) \['img_size'\].*image_size"):
        get_dataset("glyphs", "train", img_size=10)
    with pytest.raises(DataError, match=r"unknown split 'dev'.*background"):
        get_dataset("omniglot", "dev", "/")


def test_dataset_options_and_bad_values() -> None:
    assert dataset_options("omniglot") == {
        "image_size": 28, "rotations": False, "val_alphabets": 5, "seed": 0,
        "cache_dir": None, "disk_cache": True}
    assert dataset_options("miniimagenet") == {"image_size": 84, "cache_dir": None,
                                               "disk_cache": True}
    assert dataset_options("cub")["image_size"] == 84
    with pytest.raises(DataError, match=r"rotations must be true or false, got 'yes'"):
        get_dataset("omniglot", "train", "/", rotations="yes")
    with pytest.raises(DataError, match=r"image_size must be a positive integer, got 0"):
        get_dataset("miniimagenet", "train", "/", image_size=0)
    with pytest.raises(DataError, match=r"channels must be 1 or 3, got 2"):
        get_dataset("fc100", "train", "/", channels=2)


def test_data_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root, arg_root = tmp_path / "env", tmp_path / "arg"
    env_root.mkdir()
    arg_root.mkdir()
    monkeypatch.delenv("METAPRUNE_DATA", raising=False)
    with pytest.raises(DataError, match=r"'root' option.*METAPRUNE_DATA"):
        resolve_data_root(None)
    monkeypatch.setenv("METAPRUNE_DATA", str(env_root))
    assert resolve_data_root(None) == env_root
    assert resolve_data_root(arg_root) == arg_root  # argument wins
    monkeypatch.setenv("METAPRUNE_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"gone.*METAPRUNE_DATA"):
        resolve_data_root(None)
    # get_dataset uses the env var; glyphs needs no root at all
    monkeypatch.setenv("METAPRUNE_DATA", str(env_root))
    _png(env_root / "fc100" / "val" / "x" / "0.png", (1, 2, 3), mode="RGB")
    assert get_dataset("fc100", "val").class_names == ["x"]
    monkeypatch.delenv("METAPRUNE_DATA")
    assert get_dataset("glyphs", "test", num_classes=2, samples_per_class=1).num_classes == 2


# ----------------------------------------------------------------------------- rotations

def test_rotated_classes_are_rot90() -> None:
    img = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)[None]  # (1, 1, 2, 2)
    base = TensorClassDataset(["a", "b"], [img, img.flip(-1)])
    rot = RotatedClasses(base)
    assert rot.num_classes == 8
    assert rot.class_names[:4] == ["a@rot0", "a@rot90", "a@rot180", "a@rot270"]
    px = [(rot.images(c, [0]) * 255).round().long()[0, 0].tolist() for c in range(4)]
    assert px[0] == [[1, 2], [3, 4]]
    assert px[1] == [[2, 4], [1, 3]]  # 90 degrees counter-clockwise, as np.rot90
    assert px[2] == [[4, 3], [2, 1]]
    assert px[3] == [[3, 1], [4, 2]]
    assert torch.equal(rot.images(5, [0]), torch.rot90(base.images(1, [0]), 1, dims=(-2, -1)))


# ----------------------------------------------------------------------------- folder layouts

def test_image_folder_splits(tmp_path: Path) -> None:
    for split, classes in (("train", ["b", "a"]), ("test", ["c"])):
        for k, c in enumerate(classes):
            for i in range(3):
                _png(tmp_path / split / c / f"{i}.png", (10 * k, 0, 0), size=6, mode="RGB")
    tr = get_dataset("folder", "train", tmp_path)
    assert tr.class_names == ["a", "b"] and tr.image_shape == (3, 6, 6)
    assert [tr.class_size(c) for c in range(2)] == [3, 3]
    assert torch.allclose(tr.images(1, [2])[0, 0], torch.full((6, 6), 0.0))  # b was k=0
    assert torch.allclose(tr.images(0, [0])[0, 0], torch.full((6, 6), 10 / 255))
    gray = get_dataset("folder", "test", tmp_path, channels=1, image_size=4)
    assert gray.image_shape == (1, 4, 4) and gray.images(0, [0, 1]).shape == (2, 1, 4, 4)
    with pytest.raises(DataError, match=r"split 'val' is not a sub-folder.*\['test', 'train'\]"):
        get_dataset("folder", "val", tmp_path)


def test_cifarfs_layout(tmp_path: Path) -> None:
    base = tmp_path / "cifar-fs"
    classes = {"train": ["apple", "bee", "cup"], "val": ["dog"], "test": ["eel", "fox"]}
    for split, names in classes.items():
        (base / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
        (base / "splits" / "bertinetto" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, n in enumerate(names):
            for i in range(4):
                _png(base / "data" / n / f"{n}_{i}.png", (k * 20, 5, 5), size=32, mode="RGB")
    for split, names in classes.items():
        ds = get_dataset("cifarfs", split, tmp_path)
        assert ds.class_names == names
        assert [ds.class_size(c) for c in range(len(names))] == [4] * len(names)
        assert ds.image_shape == (3, 32, 32)
    ds = get_dataset("cifarfs", "train", tmp_path, image_size=16)
    assert ds.images(2, [0]).shape == (1, 3, 16, 16)
    assert abs(float(ds.images(2, [0])[0, 0].mean()) - 40 / 255) < 1e-6
    (base / "splits" / "bertinetto" / "val.txt").write_text("dog\nyak\n")
    with pytest.raises(DataError, match=r"class 'yak'.*val\.txt"):
        get_dataset("cifarfs", "val", tmp_path)


def test_fc100_layout(tmp_path: Path) -> None:
    counts = {"train": 3, "val": 2, "test": 2}
    for split, n in counts.items():
        for c in range(n):
            for i in range(c + 2):
                _png(tmp_path / "fc100" / split / f"{split}{c}" / f"{i}.png", (0, 0, 0),
                     size=32, mode="RGB")
    for split, n in counts.items():
        ds = get_dataset("fc100", split, tmp_path)
        assert ds.class_names == [f"{split}{c}" for c in range(n)]
        assert [ds.class_size(c) for c in range(n)] == [c + 2 for c in range(n)]
    assert get_dataset("fc100", "val", tmp_path).images(1, [0, 1, 2]).shape == (3, 3, 32, 32)


def test_cub_standard_split(tmp_path: Path) -> None:
    img = tmp_path / "cub" / "images"
    names = [f"{i:03d}.Bird_{i}" for i in range(1, 201)]
    for n in names:
        d = img / n
        d.mkdir(parents=True)
        Image.new("RGB", (5, 7), (int(n[:3]), 0, 0)).save(d / "a.jpg", quality=100)
    tr, va, te = (get_dataset("cub", s, tmp_path, image_size=6) for s in ("train", "val", "test"))
    assert tr.class_names == names[:100]
    assert va.class_names == names[100:150]
    assert te.class_names == names[150:]
    assert te.images(0, [0]).shape == (1, 3, 6, 6)
    red = float(te.images(49, [0])[0, 0].mean()) * 255
    assert abs(red - 200) < 3  # class 200 is the last test class
    import shutil

    shutil.rmtree(img / names[0])
    with pytest.raises(DataError, match=r"199 class folders.*exactly 200"):
        get_dataset("cub", "train", tmp_path)


# ----------------------------------------------------------------------------- omniglot (fake)

def _fake_omniglot(root: Path, corrupt: str | None = None) -> dict[str, int]:
    """4 background alphabets x 2 characters x 3 drawers; 2 evaluation alphabets.

    Character c of alphabet a has a black square (value 0) of side 2 + c at the top-left
    corner on a white page, so after inversion its bright area is known exactly.
    """
    (root / "omniglot").mkdir(parents=True, exist_ok=True)
    parts = {"images_background": ["Alpha", "Beta", "Gamma", "Delta"],
             "images_evaluation": ["Omega", "Psi"]}
    for stem, alphas in parts.items():
        with zipfile.ZipFile(root / "omniglot" / f"{stem}.zip", "w") as zf:
            for alpha in alphas:
                for c in range(2):
                    for d in range(1, 4):
                        page = np.full((10, 10), 255, np.uint8)
                        page[: 2 + c, : 2 + c] = 0
                        name = f"{stem}/{alpha}/character{c + 1:02d}/0{c}_{d:02d}.png"
                        data = b"garbage" if name == corrupt else _png_bytes(page)
                        zf.writestr(name, data)
    return {"background": 8, "evaluation": 4}


def test_omniglot_fake_splits_and_inversion(tmp_path: Path, _tmp_cache: Path) -> None:
    _fake_omniglot(tmp_path)
    bg = get_dataset("omniglot", "background", tmp_path, image_size=10)
    assert bg.num_classes == 8 and bg.image_shape == (1, 10, 10)
    assert bg.class_names[:2] == ["Alpha/character01", "Alpha/character02"]
    assert [bg.class_size(c) for c in range(8)] == [3] * 8
    x = (bg.images(1, [0]) * 255).round()[0, 0]  # character02: 3x3 stroke square
    assert x[:3, :3].eq(255).all() and x.sum() == 9 * 255
    tr = get_dataset("omniglot", "train", tmp_path, image_size=10, val_alphabets=1, seed=3)
    va = get_dataset("omniglot", "val", tmp_path, image_size=10, val_alphabets=1, seed=3)
    assert len(alphabets(va)) == 1 and va.num_classes == 2 and tr.num_classes == 6
    assert not set(alphabets(tr)) & set(alphabets(va))
    assert sorted(alphabets(tr) + alphabets(va)) == ["Alpha", "Beta", "Delta", "Gamma"]
    te = get_dataset("omniglot", "test", tmp_path, image_size=10)
    assert alphabets(te) == ["Omega", "Psi"] and te.num_classes == 4
    rot = get_dataset("omniglot", "test", tmp_path, image_size=10, rotations=True)
    assert rot.num_classes == 16
    with pytest.raises(DataError, match=r"val_alphabets=4 must be in \[0, 3\]"):
        get_dataset("omniglot", "val", tmp_path, image_size=10, val_alphabets=4)
    # both parts were decoded once and cached
    assert len(list(_tmp_cache.glob("omniglot-*.npz"))) == 2


def test_omniglot_cache_and_extracted_folder(tmp_path: Path, _tmp_cache: Path) -> None:
    _fake_omniglot(tmp_path)
    first = omniglot(tmp_path, "background", image_size=8)
    cached = omniglot(tmp_path, "background", image_size=8)
    assert len(list(_tmp_cache.glob("*.npz"))) == 1
    for c in range(first.num_classes):
        assert torch.equal(first.images(c, [0, 1, 2]), cached.images(c, [0, 1, 2]))
    # a different size is a different cache entry
    omniglot(tmp_path, "background", image_size=6)
    assert len(list(_tmp_cache.glob("*.npz"))) == 2
    # the extracted folder gives the same result as the zip
    ext = tmp_path / "ext"
    with zipfile.ZipFile(tmp_path / "omniglot" / "images_background.zip") as zf:
        zf.extractall(ext)
    from_dir = omniglot(ext, "background", image_size=8)
    assert from_dir.class_names == first.class_names
    assert torch.equal(from_dir.images(5, [2]), first.images(5, [2]))
    # editing one file of the extracted folder invalidates its cache entry
    page = np.full((10, 10), 255, np.uint8)
    (ext / "images_background/Gamma/character02/01_03.png").write_bytes(_png_bytes(page))
    edited = omniglot(ext, "background", image_size=8)
    g = edited.class_names.index("Gamma/character02")
    assert float(edited.images(g, [2]).max()) == 0.0  # blank page -> no strokes
    assert float(first.images(g, [2]).max()) == 1.0
    assert torch.equal(edited.images(g, [1]), first.images(g, [1]))
    assert len(list(_tmp_cache.glob("*.npz"))) == 4


def test_omniglot_corrupt_member_named(tmp_path: Path) -> None:
    bad = "images_evaluation/Psi/character02/01_03.png"
    _fake_omniglot(tmp_path, corrupt=bad)
    with pytest.raises(DataError, match=bad):
        get_dataset("omniglot", "test", tmp_path)


# ----------------------------------------------------------------------------- mini-imagenet (fake)

def _fake_miniimagenet(folder: Path, as_zip: bool) -> None:
    labels = {"train": ["n02", "n01"], "val": ["n03"], "test": ["n04", "n05"]}
    files: dict[str, bytes] = {}
    for split, labs in labels.items():
        rows = ["filename,label"]
        for lab in labs:
            for i in range(3):
                name = f"{lab}{i:08d}.jpg"
                buf = io.BytesIO()
                Image.new("RGB", (12, 12), (int(lab[1:]) * 40, 0, 0)).save(buf, "JPEG",
                                                                            quality=100)
                files[f"mini-imagenet/images/{name}"] = buf.getvalue()
                rows.append(f"{name},{lab}")
        files[f"mini-imagenet/{split}.csv"] = ("\n".join(rows) + "\n").encode()
    if as_zip:
        (folder / "mini-imagenet").mkdir(parents=True)
        with zipfile.ZipFile(folder / "mini-imagenet" / "mini-imagenet-100.zip", "w") as zf:
            for k, v in files.items():
                zf.writestr(k, v)
    else:
        for k, v in files.items():
            (folder / k).parent.mkdir(parents=True, exist_ok=True)
            (folder / k).write_bytes(v)


@pytest.mark.parametrize("as_zip", [True, False])
def test_miniimagenet_fake(tmp_path: Path, as_zip: bool) -> None:
    _fake_miniimagenet(tmp_path, as_zip)
    tr = get_dataset("miniimagenet", "train", tmp_path, image_size=12)
    assert tr.class_names == ["n01", "n02"]  # sorted by label
    assert [tr.class_size(c) for c in range(2)] == [3, 3] and tr.image_shape == (3, 12, 12)
    assert abs(float(tr.images(1, [0])[0, 0].mean()) * 255 - 80) < 3
    te = get_dataset("miniimagenet", "test", tmp_path, image_size=6)
    assert te.class_names == ["n04", "n05"] and te.images(0, [0, 1, 2]).shape == (3, 3, 6, 6)
    assert get_dataset("miniimagenet", "val", tmp_path).image_shape == (3, 84, 84)


def test_miniimagenet_bad_csv_and_missing_image(tmp_path: Path) -> None:
    _fake_miniimagenet(tmp_path, as_zip=False)
    csv_path = tmp_path / "mini-imagenet" / "val.csv"
    csv_path.write_text("file,class\nx.jpg,n03\n")
    with pytest.raises(DataError, match=r"val\.csv.*header"):
        get_dataset("miniimagenet", "val", tmp_path)
    csv_path.write_text("filename,label\nn0300000000.jpg,n03\nmissing.jpg,n03\n")
    with pytest.raises(DataError, match=r"missing\.jpg"):
        get_dataset("miniimagenet", "val", tmp_path)


# ----------------------------------------------------------------------------- checksums

def test_sha256_and_verification(tmp_path: Path) -> None:
    f = tmp_path / "images_background.zip"
    f.write_bytes(b"not the real archive")
    digest = hashlib.sha256(b"not the real archive").hexdigest()
    assert sha256_file(f) == digest
    assert verify_sha256(f, ["0" * 64, digest.upper()]) == digest
    with pytest.raises(DataError, match=r"checksum mismatch for '.*images_background\.zip'"):
        verify_sha256(f, ["0" * 64])
    with pytest.raises(DataError, match=r"images_background\.zip.*sha256 " + digest):
        verify_omniglot_archive(f)
    other = tmp_path / "images.zip"
    other.write_bytes(b"")
    with pytest.raises(DataError, match=r"unknown Omniglot archive name 'images\.zip'"):
        verify_omniglot_archive(other)


# ----------------------------------------------------------------------------- real data

REAL = Path(os.environ["METAPRUNE_DATA"]) if os.environ.get("METAPRUNE_DATA") else None


def _real(rel: str) -> Path:
    if REAL is None or not (REAL / rel).is_file():
        pytest.skip(f"needs METAPRUNE_DATA with {rel}")
    return REAL / rel


def test_real_omniglot() -> None:
    _real("omniglot/images_background.zip")
    _real("omniglot/images_evaluation.zip")
    verify_omniglot_archive(REAL / "omniglot" / "images_background.zip")  # type: ignore[operator]
    bg = get_dataset("omniglot", "background")
    te = get_dataset("omniglot", "test")
    assert bg.num_classes == 964 and te.num_classes == 659
    assert len(alphabets(bg)) == 30 and len(alphabets(te)) == 20
    assert {bg.class_size(c) for c in range(964)} == {20}
    assert {te.class_size(c) for c in range(659)} == {20}
    assert bg.image_shape == (1, 28, 28)
    x = bg.images(0, list(range(20)))
    assert float(x.mean()) < 0.25 and float(x.max()) == 1.0  # bright strokes on black
    tr, va = get_dataset("omniglot", "train"), get_dataset("omniglot", "val")
    assert len(alphabets(va)) == 5 and len(alphabets(tr)) == 25
    assert not set(alphabets(tr)) & set(alphabets(va))
    assert not set(alphabets(bg)) & set(alphabets(te))
    assert tr.num_classes + va.num_classes == 964


def test_real_miniimagenet() -> None:
    _real("mini-imagenet/mini-imagenet-100.zip")
    seen: set[str] = set()
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        ds = get_dataset("miniimagenet", split, image_size=32)
        assert ds.num_classes == n, split
        assert {ds.class_size(c) for c in range(n)} == {100}
        assert ds.image_shape == (3, 32, 32)
        assert not seen & set(ds.class_names)
        seen |= set(ds.class_names)
