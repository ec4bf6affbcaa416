"""Structured widths rounded to multiples (--round-to): every width allowed, within the uniform
widths' weights (and the memory budget), no single step up left that fits; unreachable
roundings and the unstructured methods are refused naming the flag; the CLI's final model has
the rounded widths."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import structured_prune_args, train_tiny
from torch import nn

from metaprune.models import build_model
from metaprune.pruning.structured import (
    WidthCosts,
    allocate_widths,
    group_widths,
    round_widths,
    rounding_choices,
    schedule,
)

KEEP = 0.3 ** 0.5  # 70% of the weights removed


def resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet12", n_way=5, in_channels=1, widths=[16, 32, 64, 128],
                        image_size=16)
    return model, torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def steps_up_that_fit(cost: WidthCosts, given: list[int], widths: list[int], multiple: int,
                      budget: int) -> list[int]:
    """Groups that could still go up to their upper rounding within both limits."""
    out, memory = [], cost.activations(given)
    for g, (w, f) in enumerate(zip(widths, cost.full)):
        up = rounding_choices(given[g], f, multiple)[-1]
        if w < up:
            moved = list(widths)
            moved[g] = up
            if cost.weights(moved) <= budget and cost.activations(moved) <= memory:
                out.append(g)
    return out


def test_rounding_choices() -> None:
    assert rounding_choices(9, 16, 8) == [8, 16]
    assert rounding_choices(16, 16, 8) == [16]
    assert rounding_choices(3, 16, 8) == [8]        # never below one multiple
    assert rounding_choices(67, 70, 8) == [64, 70]  # the full width is allowed
    assert rounding_choices(5, 6, 8) == [6]         # a group narrower than the multiple


@pytest.mark.parametrize("multiple", [4, 8])
def test_rounded_widths_are_multiples_within_the_weights(multiple: int) -> None:
    model, example = resnet()
    cost = WidthCosts.measure(model, example)
    uniform = schedule(group_widths(model, example), KEEP, 1)[0]
    assert any(w % multiple for w in uniform)  # rounding has work to do
    widths = allocate_widths(model, example, KEEP, round_to=multiple)
    assert all(w in rounding_choices(u, f, multiple)
               for w, u, f in zip(widths, uniform, cost.full)), (widths, uniform)
    assert all(w % multiple == 0 for w in widths)
    budget = cost.weights(uniform)
    assert cost.weights(widths) <= budget
    assert cost.activations(widths) <= cost.activations(uniform)
    assert steps_up_that_fit(cost, uniform, widths, multiple, budget) == []


def test_rounding_keeps_the_memory_budget() -> None:
    model, example = resnet()
    cost = WidthCosts.measure(model, example)
    uniform = schedule(cost.full, KEEP, 1)[0]
    memory = cost.activations(uniform) / cost.activation_full - 0.1
    fitted = allocate_widths(model, example, KEEP, memory=memory)
    widths = allocate_widths(model, example, KEEP, memory=memory, round_to=4)
    target = memory * cost.activation_full
    assert all(w in rounding_choices(u, f, 4) and w % 4 == 0
               for w, u, f in zip(widths, fitted, cost.full)), (widths, fitted)
    assert cost.activations(widths) <= cost.activations(fitted) <= target
    assert cost.weights(widths) <= cost.weights(uniform)
    assert steps_up_that_fit(cost, fitted, widths, 4, cost.weights(uniform)) == []


def test_unreachable_rounding_is_refused() -> None:
    model, example = resnet()
    cost = WidthCosts.measure(model, example)
    uniform = schedule(cost.full, KEEP, 1)[0]
    # multiples of 64: groups of 16 and 32 channels can only stay whole, far over budget
    with pytest.raises(ValueError, match="--round-to 64: the lower roundings"):
        allocate_widths(model, example, KEEP, round_to=64)
    with pytest.raises(ValueError, match="--round-to must be a positive"):
        round_widths(cost, uniform, 0, cost.weights(uniform))


def test_prune_cli_round_to(tmp_path, capsys) -> None:
    from metaprune.checkpoint import load_checkpoint
    from metaprune.cli import main

    checkpoint = train_tiny(tmp_path / "d", width=16)
    base = structured_prune_args(checkpoint, 0.7)
    assert main([*base, "--round-to", "4", "--out", str(tmp_path / "r")]) == 0
    assert "widths in multiples of 4" in capsys.readouterr().out
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["config"]["round_to"] == 4
    slim = load_checkpoint(tmp_path / "r" / "round02", with_optimizer=False).learner.model
    widths = group_widths(slim, torch.rand(2, 1, 12, 12))
    assert widths == state["final_widths"] and all(w % 4 == 0 for w in widths), widths
    assert widths != schedule(state["start_widths"], 0.3 ** 0.5, 1)[0]
    # the same folder with another rounding is refused, not mixed
    assert main([*base, "--round-to", "8", "--out", str(tmp_path / "r")]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["prune", str(checkpoint), "--method", "magnitude",
                 "--round-to", "8", "--out", str(tmp_path / "u")]) == 2
    assert "--round-to" in capsys.readouterr().err
