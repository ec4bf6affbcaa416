"""The device runtime: same adaptation as the library, pruned weights stay 0, allowed imports
only, support-statistics BatchNorm, folder reading, and the adapt CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_pruned_learner
from PIL import Image

from metaprune.cli import main
from metaprune.deploy.format import load_mpz, mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel, load_image

FORBIDDEN = ("metaprune.learners", "metaprune.training", "metaprune.pruning",
             "metaprune.evaluation", "metaprune.experiment", "metaprune.checkpoint",
             "metaprune.commands", "metaprune.data", "matplotlib", "tqdm")




def pruned_learner(name: str = "maml", sparsity: float = 0.85, seed: int = 0,
                   model: str = "conv4", **model_kw):
    return random_pruned_learner(name, sparsity, seed, inner_lr=0.3, model=model, **model_kw)


def task(n_way: int = 5, k: int = 2, q: int = 4, seed: int = 3, shape=(1, 28, 28)):
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(n_way * k, *shape, generator=g)
    qx = torch.rand(n_way * q, *shape, generator=g)
    return sx, torch.arange(n_way).repeat_interleave(k), qx


CASES = [("maml", "conv4", {}), ("metasgd", "conv4", {}), ("anil", "conv4", {}),
         ("protonet", "conv4", {}), ("fomaml", "resnet12",
                                     {"widths": [8, 8, 16, 16], "in_channels": 3,
                                      "image_size": 16})]


@pytest.mark.parametrize("name,arch,kw", CASES)
def test_runtime_adaptation_equals_library(tmp_path, name: str, arch: str, kw: dict) -> None:
    learner = pruned_learner(name, model=arch, **kw)
    dm = DeviceModel.load(save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner)))
    shape = (1, 28, 28) if arch == "conv4" else (3, 16, 16)
    sx, sy, qx = task(shape=shape)
    ref = learner.adapt(sx, sy, steps=learner.eval_inner_steps)
    got = dm.adapt(sx, sy)
    for n, p in ref.params.items():
        assert (got.params[n] - p.detach()).abs().max().item() <= 1e-6, n
    moved = sum(not torch.equal(got.params[n], p) for n, p in learner.model.named_parameters())
    assert moved > 0 if name != "protonet" else moved == 0
    for n, m in learner.masks.items():  # pruned weights exactly 0 after adaptation
        assert bool((got.params[n][m == 0] == 0).all()), n
    with torch.no_grad():
        lib_logits = learner.predict(ref, qx)
    # bn="batch" reproduces the library's (query-batch statistics) evaluation
    assert torch.allclose(got.logits(qx, bn="batch"), lib_logits, atol=1e-5, rtol=1e-5)
    if name == "protonet":
        assert torch.allclose(got.prototypes, ref.prototypes, atol=1e-6)


def test_more_steps_and_pruned_weights_stay_zero(tmp_path) -> None:
    learner = pruned_learner("maml", sparsity=0.9)
    dm = DeviceModel.load(save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner)))
    sx, sy, _ = task()
    got = dm.adapt(sx, sy, steps=7)
    ref = learner.adapt(sx, sy, steps=7)
    for n, m in learner.masks.items():
        assert int((got.params[n][m == 0] != 0).sum()) == 0, n
        assert (got.params[n] - ref.params[n].detach()).abs().max().item() <= 1e-6, n
    with pytest.raises(ValueError, match="5-way"):
        dm.adapt(sx[:6], sy[:6])  # 3 classes for a 5-way head


def test_support_statistics_make_predictions_batch_independent(tmp_path) -> None:
    learner = pruned_learner("maml")
    dm = DeviceModel.load(save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner)))
    sx, sy, qx = task()
    a = dm.adapt(sx, sy)
    full = a.logits(qx)
    one_by_one = torch.cat([a.logits(qx[i:i + 1]) for i in range(len(qx))])
    assert (full - one_by_one).abs().max().item() <= 1e-5
    # on the support set, frozen support statistics = the batch statistics adaptation used
    assert torch.allclose(a.logits(sx), a.logits(sx, bn="batch"), atol=1e-4)
    # why: with batch statistics an image's logits depend on the other images of its batch
    # (alone it gets its own per-image statistics, which adaptation never saw)
    alone = a.logits(qx[:1], bn="batch")
    in_batch = a.logits(qx, bn="batch")[:1]
    in_other_batch = a.logits(torch.cat([qx[:1], sx]), bn="batch")[:1]
    assert (alone - in_batch).abs().max().item() > 1e-3
    assert (in_other_batch - in_batch).abs().max().item() > 1e-3


def test_runtime_imports_only_allowed_modules(tmp_path) -> None:
    learner = pruned_learner("maml")
    path = save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner))
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        FORBIDDEN = {FORBIDDEN!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.startswith(FORBIDDEN):
                    raise ModuleNotFoundError(f"forbidden import: {{name}}")
        sys.meta_path.insert(0, Block())
        import torch
        from metaprune.deploy.runtime import DeviceModel
        dm = DeviceModel.load({str(path)!r})
        a = dm.adapt(torch.rand(5, 1, 28, 28), torch.arange(5))
        a.logits(torch.rand(2, 1, 28, 28))
        print(sorted(sys.modules))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    mods = eval(out.stdout.strip().splitlines()[-1])
    ours = sorted(m for m in mods if m.startswith("metaprune"))
    assert all(m.startswith(("metaprune.deploy", "metaprune.models"))
               or m in ("metaprune", "metaprune.finite", "metaprune.images") for m in ours), ours
    assert not [m for m in mods if m.startswith(FORBIDDEN)]
    assert "metaprune.deploy.runtime" in mods


def test_image_preprocessing_matches_the_data_loaders(tmp_path) -> None:
    from metaprune.data.base import load_image as data_load_image

    rng = np.random.default_rng(0)
    f = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (40, 33, 3), dtype=np.uint8)).save(f)
    for ch in (1, 3):
        assert np.array_equal(load_image(f, ch, 28), data_load_image(f, 28, ch))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad, 1, 28)


def test_adapt_cli_end_to_end_on_glyphs_episode(tmp_path, capsys) -> None:
    learner = pruned_learner("maml")
    model = save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner))
    ep = tmp_path / "ep"
    assert main(["export-episode", "--dataset", "glyphs", "--split", "test", "--n-way", "5",
                 "--k-shot", "2", "--queries", "3", "--seed", "7", "--out", str(ep)]) == 0
    capsys.readouterr()
    answers = json.loads((ep / "answers.json").read_text())
    classes = sorted(p.name for p in (ep / "support").iterdir())
    assert sorted(answers["classes"]) == classes and len(classes) == 5
    assert all(c.startswith("glyph2_") for c in classes)
    assert all(len(list((ep / "support" / c).glob("*.png"))) == 2 for c in classes)
    queries = sorted((ep / "query").glob("*.png"))
    assert len(queries) == 15 and set(answers["answers"]) == {f"query/{q.name}" for q in queries}
    # the written images are the dataset's pixels (uint8 glyphs: exact)
    from metaprune.data.registry import get_dataset
    ds = get_dataset("glyphs", "test")
    c = ds.class_names.index(classes[0])
    written = np.asarray(Image.open(sorted((ep / "support" / classes[0]).glob("*.png"))[0]))
    assert any(np.array_equal(written, (ds.images(c, [i])[0, 0] * 255).round().byte().numpy())
               for i in range(ds.class_size(c)))

    assert main(["adapt", str(model), "--support", str(ep / "support"), "--query",
                 str(ep / "query"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["classes"] == classes
    preds = res["predictions"]
    assert [Path(p["file"]).name for p in preds] == [q.name for q in queries]
    for p in preds:
        assert p["class"] in classes and p["class"] == classes[p["label"]]
        assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert p["probability"] == pytest.approx(max(p["probabilities"]), abs=1e-6)
    # same numbers as the in-process runtime on the same files
    dm = DeviceModel(load_mpz(model))
    s = dm.load_support(ep / "support")
    qx, _ = dm.load_queries([ep / "query"])
    probs = torch.softmax(dm.adapt(s.x, s.y).logits(qx), 1)
    assert np.allclose([p["probabilities"] for p in preds], probs.numpy(), atol=1e-5)

    # plain output: one line per query file, "file class probability"
    assert main(["adapt", str(model), "--support", str(ep / "support"), "--query",
                 str(queries[0]), str(queries[1])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [ln.split() for ln in lines[2:]]
    assert [r[0] for r in rows] == [str(queries[0]), str(queries[1])]
    assert all(r[1] in classes and 0 < float(r[2]) <= 1 for r in rows)

    # user errors name the culprit and return 2
    assert main(["adapt", str(model), "--support", str(ep / "query"), "--query",
                 str(queries[0])]) == 2
    assert str(ep / "query") in capsys.readouterr().err
    assert main(["adapt", str(model), "--support", str(ep / "support"), "--query",
                 str(ep / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main(["export-episode", "--out", str(ep)]) == 2
    assert "not empty" in capsys.readouterr().err
