"""Checkpoint round trips, integrity checks, and kill-and-resume of meta-training."""

from __future__ import annotations

import json

import pytest
import torch

from metaprune.checkpoint import CheckpointError, load_checkpoint, paths, save_checkpoint
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.learners import build_learner
from metaprune.models import build_model
from metaprune.training import last_iteration, meta_train


@pytest.fixture(scope="module")
def sampler() -> TaskSampler:
    return TaskSampler(glyphs("train", num_classes=10, samples_per_class=5, image_size=12),
                       n_way=3, k_shot=1, q_query=2, seed=3)


def make(name: str = "maml", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    return build_learner(name, model, inner_lr=0.3, inner_steps=1, meta_lr=0.01)


@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_round_trip_restores_weights_masks_extras_and_optimizer(tmp_path, sampler, name):
    learner = make(name)
    m = (torch.rand_like(learner.model.head.weight) > 0.5).float()
    learner.set_masks({"head.weight": m})
    learner.meta_step(sampler.batch(0, 2))
    save_checkpoint(tmp_path / "ck", learner, {"iteration": 1, "note": "x"})
    c = load_checkpoint(tmp_path / "ck.safetensors")
    for (n, a), (_, b) in zip(learner.model.named_parameters(), c.model.named_parameters()):
        assert torch.equal(a, b), n
    assert torch.equal(c.masks["head.weight"], m)
    assert c.meta["note"] == "x" and c.learner.config() == learner.config()
    for k, v in learner.extra_state().items():
        assert torch.equal(v, c.learner.extra_state()[k])
    # identical next step => optimiser state (moments, step count) was restored
    learner.meta_step(sampler.batch(2, 2))
    c.learner.meta_step(sampler.batch(2, 2))
    for (n, a), (_, b) in zip(learner.model.named_parameters(), c.model.named_parameters()):
        assert torch.equal(a, b), n


def test_files_hold_no_pickle_and_sidecar_is_json(tmp_path, sampler):
    learner = make()
    st = save_checkpoint(tmp_path / "ck", learner)
    assert st.read_bytes()[8:9] == b"{"  # safetensors: u64 header length, then JSON header
    doc = json.loads(paths(st)[1].read_text())
    assert doc["model"] == {"name": "conv4", "kwargs": {"n_way": 3, "in_channels": 1,
                                                       "width": 4, "image_size": 12}}


def test_mismatched_or_missing_files_are_named(tmp_path):
    learner = make()
    save_checkpoint(tmp_path / "a", learner)
    save_checkpoint(tmp_path / "b", make(seed=1))
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="a.safetensors.*does not match"):
        load_checkpoint(tmp_path / "a")
    with pytest.raises(CheckpointError, match="nothere.json"):
        load_checkpoint(tmp_path / "nothere")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="c.json"):
        load_checkpoint(tmp_path / "c")


def test_killed_training_resumes_to_the_same_weights(tmp_path, sampler):
    """6 iterations straight == 4 iterations, 'kill', reload from the checkpoint, 2 more."""
    straight = make()
    meta_train(straight, sampler, 6, 2, progress=False)

    first = make()

    class Killed(Exception):
        pass

    def kill_after_4(it: int, _stats: dict) -> None:
        if it == 5:  # the checkpoint of iteration 4 is on disk; iteration 5 is lost
            raise Killed

    with pytest.raises(Killed):
        meta_train(first, sampler, 6, 2, checkpoint_path=tmp_path / "ck", checkpoint_every=2,
                   progress=False, on_step=kill_after_4)
    assert last_iteration(tmp_path / "ck") == 4
    # pretend the first 4 iterations took 1000 s: the resumed run must add to that
    doc = json.loads((tmp_path / "ck.json").read_text())
    threads = torch.get_num_threads()
    assert doc["torch_threads"] == [threads]
    doc["train_seconds"] = 1000.0
    doc["torch_threads"] = [threads + 1]  # ... on another thread count: both are recorded
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    resumed = load_checkpoint(tmp_path / "ck")
    meta_train(resumed.learner, sampler, 6, 2, start_iteration=4, progress=False,
               checkpoint_path=tmp_path / "ck", checkpoint_every=2)
    assert 1000.0 < load_checkpoint(tmp_path / "ck").meta["train_seconds"] < 1100.0
    assert load_checkpoint(tmp_path / "ck").meta["torch_threads"] == [threads, threads + 1]
    for (n, a), (_, b) in zip(straight.model.named_parameters(),
                              resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)


def test_a_dot_in_the_checkpoint_name_is_part_of_the_name(tmp_path, sampler):
    """``lr0.5`` is a name, not ``lr0`` with a suffix: its files are ``lr0.5.safetensors`` and
    ``lr0.5.json`` and two such checkpoints never share files."""
    assert paths(tmp_path / "lr0.5") == (tmp_path / "lr0.5.safetensors", tmp_path / "lr0.5.json")
    assert paths(tmp_path / "lr0.5.json") == paths(tmp_path / "lr0.5")
    a, b = make(seed=0), make(seed=1)
    save_checkpoint(tmp_path / "lr0.5", a, {"iteration": 1})
    save_checkpoint(tmp_path / "lr0.7", b, {"iteration": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lr0.5.json", "lr0.5.safetensors", "lr0.7.json", "lr0.7.safetensors"]
    for learner, name in [(a, "lr0.5"), (b, "lr0.7")]:
        loaded = load_checkpoint(tmp_path / name).model.head.weight
        assert torch.equal(loaded, learner.model.head.weight), name
