"""Property-based fuzzing (hypothesis), bounded in time: whatever the input, only the
project's own error types escape the config parser, the checkpoint loader and the .mpz
loader."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from helpers import random_pruned_learner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaprune.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metaprune.config import SECTIONS, ConfigError, load_config
from metaprune.deploy.format import FormatError, mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel
from metaprune.finite import NonFiniteError

# derandomized: the same examples on every run (CI is reproducible); METAPRUNE_FUZZ=N explores
# N fresh random examples per test instead
_N = int(os.environ.get("METAPRUNE_FUZZ", "0"))
FAST = settings(max_examples=_N or 60, deadline=None, derandomize=not _N,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

keys = st.one_of(
    st.sampled_from(["data.n_way", "data.dataset", "data.options", "data.options.image_size",
                     "model.kwargs", "model.name", "learner.meta_lr", "learner.inner_steps",
                     "learner.name", "train.iterations", "eval.tasks", "train", "learner"]),
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(SECTIONS),
              st.text(string.ascii_letters + "_.", min_size=1, max_size=12)),
    st.text(max_size=15))
values = st.one_of(st.text(max_size=15), st.integers().map(str), st.floats().map(str),
                   st.sampled_from(["[1, 2]", "{a: 1}", "null", "true", "-1", "1e999",
                                    "{width: -3}", "[", "'", "{x: [}"]))


@FAST
@given(st.lists(st.builds(lambda k, v: f"{k}={v}", keys, values), max_size=4))
def test_config_overrides_raise_only_config_errors(overrides):
    try:
        load_config(None, overrides)
    except ConfigError:
        pass


@FAST
@given(st.text(max_size=200))
def test_config_files_raise_only_config_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError:
        pass


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "m"
    save_checkpoint(path, random_pruned_learner("maml", width=4))
    return path


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4)
cuts = st.one_of(st.none(), st.integers(0, 4000))


@FAST
@given(edits, cuts, st.booleans())
def test_damaged_checkpoints_raise_only_checkpoint_errors(checkpoint, tmp_path_factory, ed,
                                                           cut, sidecar):
    out = tmp_path_factory.mktemp("bad") / "m"
    for suffix in (".safetensors", ".json"):
        data = checkpoint.with_suffix(suffix).read_bytes()
        if (suffix == ".json") == sidecar:
            data = _mutated(data, ed, cut)
        out.with_suffix(suffix).write_bytes(data)
    try:
        load_checkpoint(out)
    except (CheckpointError, NonFiniteError):
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["learner", "model", "optimizer", "tensors_sha256",
                                        "format"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                 st.dictionaries(st.text(max_size=5), st.integers(),
                                                 max_size=2)), max_size=3))
def test_hostile_sidecar_fields_raise_only_checkpoint_errors(checkpoint, tmp_path_factory,
                                                             fields):
    out = tmp_path_factory.mktemp("side") / "m"
    doc = json.loads(checkpoint.with_suffix(".json").read_text())
    doc.update(fields)
    out.with_suffix(".json").write_text(json.dumps(doc))
    out.with_suffix(".safetensors").write_bytes(checkpoint.with_suffix(".safetensors")
                                                .read_bytes())
    try:
        load_checkpoint(out)
    except (CheckpointError, NonFiniteError):
        pass


@pytest.fixture(scope="module")
def mpz(tmp_path_factory) -> Path:
    return save_mpz(tmp_path_factory.mktemp("mpz") / "m.mpz",
                    mpz_from_learner(random_pruned_learner("maml", width=4)))


@FAST
@given(edits, cuts)
def test_damaged_mpz_files_raise_only_format_errors(mpz, tmp_path_factory, ed, cut):
    out = tmp_path_factory.mktemp("badmpz") / "m.mpz"
    out.write_bytes(_mutated(mpz.read_bytes(), ed, cut))
    try:
        DeviceModel.load(out)
    except (FormatError, NonFiniteError):
        pass
