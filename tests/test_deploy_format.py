"""The .mpz format: exact round trips, index encodings, size against the information limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_pruned_learner

from metaprune.cli import main
from metaprune.deploy.format import (
    FormatError,
    _escaped,
    decode_mask,
    encode_mask,
    load_mpz,
    mpz_from_learner,
    read_meta,
    save_mpz,
    size_report,
)


def pruned_learner(name: str = "maml", sparsity: float = 0.85, width: int = 32, seed: int = 0):
    return random_pruned_learner(name, sparsity, seed, inner_lr=0.4, width=width)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("density", [0.0, 0.003, 0.05, 0.15, 0.5, 0.97, 1.0])
def test_mask_encoding_round_trip_and_choice(density: float) -> None:
    rng = np.random.default_rng(int(density * 1000))
    n = 70_001
    m = rng.random(n) < density
    enc, data = encode_mask(m)
    assert np.array_equal(decode_mask(enc, data, n), m)
    if m.all():
        assert enc == "full" and data == b""
    else:  # never larger than the bitmask
        assert len(data) <= (n + 7) // 8
    if density == 0.15:
        assert enc == "bitmask"      # 1 byte per kept entry would be 1.2 bits per weight
    if density == 0.003:
        assert enc == "delta8"


@pytest.mark.parametrize("enc,esc,dtype", [("delta8", 255, "u1"), ("delta16", 65535, "<u2")])
def test_escaped_deltas_with_long_gaps(enc: str, esc: int, dtype: str) -> None:
    n = 300_000
    pos = np.array([0, 1, 256, 511, 512, 70_000, 200_000, n - 1])
    m = np.zeros(n, dtype=bool)
    m[pos] = True
    gaps = np.diff(pos, prepend=-1) - 1
    data = _escaped(gaps, esc, dtype).tobytes()
    assert np.array_equal(decode_mask(enc, data, n), m)
    # and the chosen encoding of this very sparse mask round-trips too
    e, d = encode_mask(m)
    assert e in ("delta8", "delta16") and np.array_equal(decode_mask(e, d, n), m)


@pytest.mark.parametrize("learner_name", ["maml", "metasgd", "anil", "protonet"])
def test_round_trip_is_exact(tmp_path, learner_name: str) -> None:
    learner = pruned_learner(learner_name)
    path = save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner))
    back = load_mpz(path)
    params = dict(learner.model.named_parameters())
    assert set(back.params) == set(params)
    for n, p in params.items():
        # bit-identical (pruned entries are +0.0: the sign of a pruned zero is not kept)
        assert torch.equal(bits(back.params[n]), bits(p.detach() + 0.0)), n
    assert set(back.masks) == set(learner.masks)
    for n, m in learner.masks.items():
        assert back.masks[n].dtype == torch.float32 and torch.equal(back.masks[n], m), n
    rule = back.meta["rule"]
    assert rule["learner"] == learner_name and rule["inner_lr"] == 0.4
    if learner_name == "protonet":
        assert rule["kind"] == "prototypes"
    else:
        assert rule["kind"] == "gradient" and rule["steps"] == 3
        assert rule["adapt"] == learner.adapt_names
    if learner_name == "anil":
        assert rule["adapt"] == ["head.weight", "head.bias"]
    if learner_name == "metasgd":
        assert rule["per_weight_lr"]
        for k, lr in learner.extra_state().items():
            n = k[3:].replace("__", ".")
            keep = learner.masks.get(n, torch.ones_like(lr))
            # stored at kept entries only (a pruned weight never moves)
            assert torch.equal(bits(back.lrs[n]), bits(lr * keep + 0.0)), n
    assert back.meta["model"] == {"name": "conv4", "kwargs": {"width": 32}}
    assert back.meta["input"]["channels"] == 1 and back.meta["input"]["size"] == 28
    assert back.meta["n_way"] == 5


def test_size_within_115_percent_of_information_limit(tmp_path) -> None:
    learner = pruned_learner("maml", sparsity=0.85, width=32)
    path = save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner))
    rep = size_report(path)
    n_params = sum(p.numel() for p in learner.model.parameters())
    assert rep.dense_bytes == 4 * n_params
    prunable = sum(m.numel() for m in learner.masks.values())
    kept = sum(int(m.sum()) for m in learner.masks.values())
    dense_rest = n_params - prunable
    assert rep.prunable == prunable and rep.kept == kept
    assert rep.limit_bytes == 4 * (kept + dense_rest) + (prunable + 7) // 8
    assert rep.compact_bytes == path.stat().st_size
    assert rep.ratio <= 1.15, rep.lines()
    assert rep.compact_bytes < rep.dense_bytes / 4


def test_unpruned_model_costs_no_index(tmp_path) -> None:
    learner = pruned_learner("maml", sparsity=0.0)
    path = save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner))
    layout = {e[0]: e[2] for e in read_meta(path)["layout"]}
    assert all(layout[n] == "full" for n in learner.masks)
    back = load_mpz(path)
    assert all(torch.equal(back.masks[n], m) for n, m in learner.masks.items())


def test_export_refuses_weights_alive_at_pruned_positions(tmp_path) -> None:
    learner = pruned_learner("maml")
    mpz = mpz_from_learner(learner)
    w = mpz.params["features.1.0.weight"]
    w[mpz.masks["features.1.0.weight"] == 0] = 1.0
    with pytest.raises(FormatError, match="features.1.0.weight"):
        save_mpz(tmp_path / "m.mpz", mpz)


def test_bad_files_are_named(tmp_path) -> None:
    with pytest.raises(FormatError, match="nope.mpz"):
        load_mpz(tmp_path / "nope.mpz")
    junk = tmp_path / "junk.mpz"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(FormatError, match="junk.mpz"):
        read_meta(junk)
    learner = pruned_learner("maml")
    path = save_mpz(tmp_path / "ok.mpz", mpz_from_learner(learner))
    meta = read_meta(path)
    assert meta["format"] == "metaprune-mpz"


def test_export_cli_from_checkpoint(tmp_path, capsys) -> None:
    from metaprune.checkpoint import save_checkpoint

    learner = pruned_learner("metasgd")
    save_checkpoint(tmp_path / "ckpt", learner)
    out = tmp_path / "model.mpz"
    assert main(["export", str(tmp_path / "ckpt"), "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["compact_bytes"] == out.stat().st_size
    assert rep["ratio"] == pytest.approx(rep["compact_bytes"] / rep["limit_bytes"])
    back = load_mpz(out)
    for n, p in learner.model.named_parameters():
        assert torch.equal(back.params[n], p.detach()), n
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
