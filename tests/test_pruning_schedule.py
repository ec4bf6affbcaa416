"""Exact allocation, schedules, masked re-meta-training, resume after a kill, and the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from metaprune.checkpoint import load_checkpoint, save_checkpoint
from metaprune.cli import main
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.learners import build_learner
from metaprune.masks import prunable_weights
from metaprune.models import build_model
from metaprune.pruning import (
    CRITERIA,
    DEFAULT_SCHEDULE,
    allocate,
    cumulative_targets,
    exact_count,
    parse_schedule,
    prune,
    select_global,
    select_layerwise,
)
from metaprune.pruning.pruner import RETRAIN_TASK_OFFSET, SCORE_TASK_OFFSET

DATA_OPTS = {"num_classes": 5, "samples_per_class": 4, "image_size": 12}


# the tiny test models' heads have 4 inputs per class: the few-inputs warning is expected
pytestmark = pytest.mark.filterwarnings("ignore:pruning .* leaves each:UserWarning")

@pytest.fixture(scope="module")
def sampler() -> TaskSampler:
    return TaskSampler(glyphs("train", **DATA_OPTS), 3, 1, 2, seed=0)


def make_learner(seed: int = 0, steps: int = 1):
    torch.manual_seed(seed)
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    return build_learner("maml", model, inner_lr=0.4, inner_steps=steps, eval_inner_steps=2,
                         meta_lr=1e-2)


def pruned_counts(learner) -> dict[str, int]:
    return {n: int((m == 0).sum()) for n, m in learner.masks.items()}


# ---- allocation and schedules ------------------------------------------------------------

def test_exact_count_and_deterministic_ties() -> None:
    assert exact_count(0.85, 577) == 490
    assert exact_count(0.5, 5) == 3 and exact_count(0.3, 5) == 2  # half up, float-noise proof
    assert exact_count(0.0, 7) == 0 and exact_count(1.0, 7) == 7
    with pytest.raises(ValueError):
        exact_count(1.5, 3)
    scores = {"a": torch.ones(2, 5), "b": torch.tensor([3.0, 1.0, 2.0, 1.0])}
    m = select_layerwise(scores, {"a": 0.3, "b": 0.5})
    assert m["a"].flatten().tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]  # ties: lowest index
    assert m["b"].tolist() == [1, 0, 1, 0]
    again = select_layerwise(scores, {"a": 0.3, "b": 0.5})
    assert all(torch.equal(m[k], again[k]) for k in m)


def test_already_pruned_weights_count_and_stay_pruned() -> None:
    cur = {"a": torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])}
    scores = {"a": torch.arange(10.0)}  # the pruned ones have high scores (e.g. w = 0 ...)
    m = select_layerwise(scores, {"a": 0.4}, cur)
    assert int((m["a"] == 0).sum()) == 4
    assert m["a"][3] == 0 and m["a"][4] == 0 and m["a"][0] == 0 and m["a"][1] == 0
    with pytest.raises(ValueError, match="already pruned"):
        select_layerwise(scores, {"a": 0.1}, cur)


def test_global_allocation_exact_total() -> None:
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(7, 3, generator=g), "b": 10 * torch.rand(11, generator=g)}
    m = select_global(scores, 0.4)
    assert sum(int((v == 0).sum()) for v in m.values()) == exact_count(0.4, 32)
    # the lowest scores overall are the ones pruned
    allv = torch.cat([scores["a"].flatten(), scores["b"]])
    mv = torch.cat([m["a"].flatten(), m["b"]])
    assert allv[mv == 0].max() <= allv[mv == 1].min()
    with pytest.raises(ValueError):
        allocate(scores, {"a": 0.1, "b": 0.2}, "global")


def test_schedules() -> None:
    assert parse_schedule("0.1x8,0.05") == DEFAULT_SCHEDULE
    assert parse_schedule("one-shot") is None
    t = cumulative_targets(0.85, DEFAULT_SCHEDULE)
    assert t == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85])
    assert cumulative_targets(0.5, DEFAULT_SCHEDULE) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert cumulative_targets(0.9, DEFAULT_SCHEDULE)[-2:] == pytest.approx([0.85, 0.9])
    assert cumulative_targets(0.85, None) == [0.85]
    for bad in ("0.1xx", "abc", "-0.1"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


# ---- the pruning loop ----------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["one-shot", "0.3,0.3"])
@pytest.mark.parametrize("method", sorted(CRITERIA))
def test_every_method_and_schedule_gives_exact_per_layer_sparsity(sampler, method,
                                                                   schedule) -> None:
    learner = make_learner()
    names = prunable_weights(learner.model)
    numel = {n: p.numel() for n, p in learner.params().items()}
    res = prune(learner, sampler, method=method, sparsity=0.6, schedule=schedule, tasks=2,
                retrain_iters=1, meta_batch=2, progress=False)
    assert [r.target for r in res] == pytest.approx([0.6] if schedule == "one-shot"
                                                    else [0.3, 0.6])
    assert set(learner.masks) == set(names)
    for n in names:
        assert pruned_counts(learner)[n] == exact_count(0.6, numel[n]), n
        assert res[-1].layers[n] == pytest.approx(exact_count(0.6, numel[n]) / numel[n])
        assert bool((learner.params()[n].detach()[learner.masks[n] == 0] == 0).all())
    total = sum(numel[n] for n in names)
    assert res[-1].sparsity == pytest.approx(sum(exact_count(0.6, numel[n]) for n in names)
                                             / total)
    assert res[-1].global_sparsity < res[-1].sparsity  # biases and BatchNorm count as dense


def test_global_allocation_layer_ratios_and_layer_switches(sampler) -> None:
    learner = make_learner()
    names = prunable_weights(learner.model)
    numel = {n: learner.params()[n].numel() for n in names}
    prune(learner, sampler, method="magnitude", sparsity=0.5, schedule="one-shot",
          allocation="global", progress=False)
    total = sum(numel.values())
    assert sum(pruned_counts(learner).values()) == exact_count(0.5, total)

    learner = make_learner()
    ratios = {names[1]: 0.8, names[2]: 0.2}
    prune(learner, sampler, method="magnitude", sparsity=0.5, schedule="0.25,0.25",
          layer_ratios=ratios, include_first=False, include_last=False, progress=False)
    assert set(learner.masks) == set(names[1:-1])
    assert pruned_counts(learner)[names[1]] == exact_count(0.8, numel[names[1]])
    assert pruned_counts(learner)[names[2]] == exact_count(0.2, numel[names[2]])
    assert pruned_counts(learner)[names[3]] == exact_count(0.5, numel[names[3]])


def test_pruned_weights_stay_zero_through_retraining_and_adaptation(sampler) -> None:
    learner = make_learner(steps=2)
    prune(learner, sampler, method="anp", sparsity=0.5, schedule="one-shot", tasks=2,
          retrain_iters=3, meta_batch=2, progress=False)
    masks, params = learner.masks, learner.params()
    named = learner.meta_parameters()
    # the outer step ran: pruned weights moved no further, the others did move
    for n, m in masks.items():
        assert bool((params[n].detach()[m == 0] == 0).all()), n
        st = learner.optimizer.state[named[f"model.{n}"]]
        assert bool((st["exp_avg"][m == 0] == 0).all()) and bool(
            (st["exp_avg_sq"][m == 0] == 0).all()), n
        assert bool((st["exp_avg_sq"][m == 1] > 0).any())
    task = sampler.task(123)
    adapted = learner.adapt(task.support_x, task.support_y, steps=learner.eval_inner_steps)
    for n, m in masks.items():  # inner loop / test-time adaptation keeps the zeros
        assert bool((adapted.params[n].detach()[m == 0] == 0).all()), n
        assert not torch.equal(adapted.params[n].detach(), params[n].detach())
    learner.evaluate_task(task)
    learner.meta_step(sampler.batch(7, 2))
    for n, m in masks.items():
        assert bool((learner.params()[n].detach()[m == 0] == 0).all()), n


class KillingSampler:
    """Raises when the re-training stream asks for its ``kill_at``-th batch."""

    def __init__(self, base: TaskSampler, kill_at: int):
        self.base, self.kill_at, self.calls = base, kill_at, 0

    def batch(self, start: int, size: int):
        if RETRAIN_TASK_OFFSET <= start < SCORE_TASK_OFFSET:
            self.calls += 1
            if self.calls == self.kill_at:
                raise KeyboardInterrupt("simulated kill")
        return self.base.batch(start, size)


def _state(learner):
    return ({n: m.clone() for n, m in learner.masks.items()},
            {n: p.detach().clone() for n, p in learner.params().items()})


OPTS = dict(method="anp", sparsity=0.6, schedule="0.2x3", tasks=2, retrain_iters=2,
            meta_batch=2, checkpoint_every=1, progress=False)


def test_resume_between_rounds_and_within_retraining_after_kill(sampler, tmp_path) -> None:
    ref = make_learner()
    full = prune(ref, sampler, out_dir=tmp_path / "full", **OPTS)
    ref_masks, ref_params = _state(ref)
    assert len(full) == 3 and all(Path(r.checkpoint + ".safetensors").exists() for r in full)
    state = json.loads((tmp_path / "full" / "state.json").read_text())
    assert [r["torch_threads"] for r in state["rounds"]] == [torch.get_num_threads()] * 3

    def kill_after_round_1(r):
        if r.round == 1:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        prune(make_learner(), sampler, out_dir=tmp_path / "a", on_round=kill_after_round_1,
              **OPTS)
    resumed = make_learner()
    res = prune(resumed, sampler, out_dir=tmp_path / "a", **OPTS)
    # kill inside re-training of round 2 (its 1st iteration is done and checkpointed)
    with pytest.raises(KeyboardInterrupt):
        prune(make_learner(), KillingSampler(sampler, 4), out_dir=tmp_path / "b", **OPTS)
    resumed_b = make_learner()
    res_b = prune(resumed_b, sampler, out_dir=tmp_path / "b", **OPTS)
    for learner, rr in ((resumed, res), (resumed_b, res_b)):
        masks, params = _state(learner)
        assert [r.round for r in rr] == [1, 2, 3]
        for n in ref_masks:
            assert torch.equal(masks[n], ref_masks[n]), n
        for n in ref_params:
            assert torch.allclose(params[n], ref_params[n], atol=1e-6), n
    loaded = load_checkpoint(tmp_path / "b" / "round03")
    assert all(torch.equal(loaded.masks[n], ref_masks[n]) for n in ref_masks)
    with pytest.raises(ValueError, match=r"another configuration \(method: '\w+' -> 'lobs'\)"):
        prune(make_learner(), sampler, out_dir=tmp_path / "a", **{**OPTS, "method": "lobs"})


def test_run_saved_before_an_option_existed_resumes_at_its_default(sampler, tmp_path) -> None:
    opts = {**OPTS, "schedule": "0.2", "sparsity": 0.2, "retrain_iters": 0}
    first = prune(make_learner(), sampler, out_dir=tmp_path / "r", **opts)
    state_path = tmp_path / "r" / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["obs_weights"]  # as written by a version without the option
    state_path.write_text(json.dumps(state))
    again = prune(make_learner(), sampler, out_dir=tmp_path / "r", **opts)
    assert [r.round for r in again] == [r.round for r in first] == [1]
    with pytest.raises(ValueError, match="another configuration"):
        prune(make_learner(), sampler, out_dir=tmp_path / "r",
              **{**opts, "obs_weights": "adapted"})
    # a run started under the earlier re-training default: the message says how to resume it
    with pytest.raises(ValueError, match=r"retrain_iters: 0 -> 5\).*--retrain-iters 0 resumes"):
        prune(make_learner(), sampler, out_dir=tmp_path / "r", **{**opts, "retrain_iters": 5})


def test_warns_when_a_layer_keeps_almost_no_input_per_unit(sampler) -> None:
    """The first conv of a 1-channel model has 9 inputs per filter: 85% leaves 1.35."""
    opts = dict(method="magnitude", sparsity=0.85, schedule="one-shot", retrain_iters=0,
                progress=False)
    with pytest.warns(UserWarning, match=r"'features\.0\.0\.weight' to 85% leaves .* 1\.4 of "
                      r"its 9 inputs"):
        prune(make_learner(), sampler, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(make_learner(), sampler, include_first=False, include_last=False, **opts)
        prune(make_learner(), sampler, **{**opts, "sparsity": 0.5})


def test_cli_prune_prints_table_and_writes_rounds(tmp_path, capsys) -> None:
    learner = make_learner()
    data = {"dataset": "glyphs", "root": None, "options": DATA_OPTS, "n_way": 3, "k_shot": 1,
            "q_query": 2, "train_split": "train", "test_split": "test"}
    save_checkpoint(tmp_path / "dense", learner, {"data": data, "config": {"data": data}})
    rc = main(["prune", str(tmp_path / "dense"), "--method", "lobs", "--sparsity", "0.5",
               "--schedule", "0.25x2", "--retrain-iters", "1", "--meta-batch", "2",
               "--tasks", "2", "--out", str(tmp_path / "out"), "--no-progress",
               "--preset", "paper"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "features.0.0.weight" in out and "[prunable weights]" in out and "50." in out
    ck = load_checkpoint(tmp_path / "out" / "round02")
    assert ck.meta["pruning"]["round"] == 2 and ck.meta["data"] == data
    assert len(ck.masks) == 5
    for m in ck.masks.values():
        assert int((m == 0).sum()) == exact_count(0.5, m.numel())
    rc = main(["prune", str(tmp_path / "dense"), "--sparsity", "1.5", "--out",
               str(tmp_path / "y")])
    assert rc == 2 and "sparsity" in capsys.readouterr().err
    rc = main(["prune", str(tmp_path / "dense"), "--method", "lobs", "--obs-weights",
               "adapted", "--out", str(tmp_path / "z"), "--no-progress"])
    assert rc == 2 and "obs_weights" in capsys.readouterr().err
    rc = main(["prune", str(tmp_path / "dense"), "--method", "anp", "--obs-weights", "adapted",
               "--sparsity", "0.5", "--schedule", "one-shot", "--retrain-iters", "0",
               "--tasks", "2", "--out", str(tmp_path / "w"), "--no-progress"])
    assert rc == 0
    state = json.loads((tmp_path / "w" / "state.json").read_text())
    assert state["config"]["obs_weights"] == "adapted"


def test_cli_presets_choose_the_pruned_layers_and_the_retraining(tmp_path, capsys) -> None:
    import argparse

    from metaprune.pruning.cli import apply_preset

    def resolved(preset: str, iterations: int, **given) -> argparse.Namespace:
        args = argparse.Namespace(preset=preset, exclude_first=None, exclude_last=None,
                                  retrain_iters=None, **{})
        for k, v in given.items():
            setattr(args, k, v)
        apply_preset(args, iterations)
        return args

    a = resolved("recommended", 3000)
    assert (a.exclude_first, a.exclude_last, a.retrain_iters) == (True, True, 600)
    assert resolved("recommended", 400).retrain_iters == 100      # never below 100
    a = resolved("paper", 3000)
    assert (a.exclude_first, a.exclude_last, a.retrain_iters) == (False, False, 100)
    a = resolved("recommended", 3000, exclude_first=False, retrain_iters=7)  # flags win
    assert (a.exclude_first, a.exclude_last, a.retrain_iters) == (False, True, 7)

    learner = make_learner()
    data = {"dataset": "glyphs", "root": None, "options": DATA_OPTS, "n_way": 3, "k_shot": 1,
            "q_query": 2, "train_split": "train", "test_split": "test"}
    save_checkpoint(tmp_path / "dense", learner, {"data": data, "config": {"data": data},
                                                  "iteration": 20})
    base = ["prune", str(tmp_path / "dense"), "--method", "magnitude", "--sparsity", "0.5",
            "--schedule", "one-shot", "--retrain-iters", "0", "--val-tasks", "0",
            "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "r")]) == 0
    assert "preset recommended: first layer and head dense" in capsys.readouterr().err
    masks = load_checkpoint(tmp_path / "r" / "round01").masks
    names = prunable_weights(learner.model)
    assert sorted(masks) == sorted(names[1:-1])
    assert main([*base, "--preset", "paper", "--out", str(tmp_path / "p")]) == 0
    assert sorted(load_checkpoint(tmp_path / "p" / "round01").masks) == sorted(names)


def test_a_seed_that_changes_nothing_is_reported(sampler) -> None:
    """``seed`` seeds only a seeded criterion: for any other method a seed unlike the
    sampler's would silently rerun the same tasks, so prune() says so."""
    opts = dict(sparsity=0.5, schedule="one-shot", retrain_iters=0, progress=False)
    with pytest.warns(UserWarning, match=r"seed=1 changes nothing for method 'magnitude'.*"
                      r"sampler \(seed 0\)"):
        prune(make_learner(), sampler, method="magnitude", seed=1, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(make_learner(), sampler, method="random", seed=1, **opts)  # it seeds random
        prune(make_learner(), TaskSampler(sampler.dataset, 3, 1, 2, seed=1),
              method="magnitude", seed=1, **opts)  # the CLI's --seed: both alike
