"""Structured pruning under a memory budget: the width cost model is exact, the allocation
meets the budget at no more weights than the uniform widths, and the CLI runs it resumably."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import structured_prune_args, train_tiny
from torch import nn

from metaprune.models import build_model
from metaprune.pruning.structured import (
    ChannelPlan,
    WidthCosts,
    activation_bytes,
    allocate_widths,
    channel_groups,
    group_widths,
    layer_weight_count,
    schedule,
    slim_model,
)


def resnet(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model("resnet12", n_way=5, in_channels=1, widths=[6, 8, 10, 12], image_size=16)
    return model, torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def slim_at(model: nn.Module, example: torch.Tensor, widths: list[int]) -> nn.Module:
    keep = [list(range(w)) for w in widths]
    return slim_model(model, ChannelPlan(keep, example=example))[0]


@pytest.mark.parametrize("arch", ["resnet12", "conv4"])
def test_width_costs_equal_the_slim_models(arch: str) -> None:
    """Weights (bilinear) and activations (linear) predicted from widths equal what the
    physically slimmed model has, at random widths."""
    if arch == "resnet12":
        model, example = resnet()
    else:
        torch.manual_seed(0)
        model = build_model("conv4", width=9)
        example = torch.rand(2, 1, 28, 28)
    cost = WidthCosts.measure(model, example)
    full = group_widths(model, example)
    assert cost.full == full
    assert cost.weights(full) == layer_weight_count(model)
    assert cost.activations(full) == activation_bytes(model, example)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        widths = [int(torch.randint(1, w + 1, (1,), generator=g)) for w in full]
        slim = slim_at(model, example, widths)
        assert cost.weights(widths) == layer_weight_count(slim), widths
        assert cost.activations(widths) == activation_bytes(slim, example), widths


def test_memory_allocation_meets_the_budget() -> None:
    model, example = resnet()
    keep = 0.3 ** 0.5  # 70% of the weights removed
    full = group_widths(model, example)
    uniform = allocate_widths(model, example, keep)
    assert uniform == schedule(full, keep, 1)[0]
    cost = WidthCosts.measure(model, example)
    base = activation_bytes(model, example)
    share = activation_bytes(slim_at(model, example, uniform), example) / base
    budget = share - 0.1
    widths = allocate_widths(model, example, keep, memory=budget)
    slim = slim_at(model, example, widths)
    assert activation_bytes(slim, example) <= budget * base
    assert layer_weight_count(slim) <= cost.weights(uniform)
    assert all(2 * w >= u for w, u in zip(widths, uniform)), (widths, uniform)  # floors
    # the memory comes from the first (highest-resolution) block, the weights go to the last
    groups = [g.name for g in channel_groups(model, example)]
    first = [i for i, n in enumerate(groups) if n.startswith("features.0.")]
    last = [i for i, n in enumerate(groups) if n.startswith("features.3.")]
    assert sum(widths[i] for i in first) < sum(uniform[i] for i in first)
    assert all(widths[i] >= uniform[i] for i in range(len(groups)) if i not in first)
    assert sum(widths[i] for i in last) > sum(uniform[i] for i in last)
    # a budget the uniform widths already meet changes nothing
    assert allocate_widths(model, example, keep, memory=share + 0.01) == uniform
    with pytest.raises(ValueError, match="out of reach"):
        allocate_widths(model, example, keep, memory=0.01)
    with pytest.raises(ValueError, match="--memory-budget must"):
        allocate_widths(model, example, keep, memory=1.5)


def test_schedule_per_group_keep() -> None:
    assert schedule([32, 32], [0.5, 0.25], 2) == [[23, 16], [16, 8]]
    assert schedule([32, 20], [16 / 32, 3 / 20], 3)[-1] == [16, 3]
    with pytest.raises(ValueError, match="one per group"):
        schedule([32, 32], [0.5], 1)


def test_prune_cli_memory_budget(tmp_path, capsys) -> None:
    """--memory-budget: the final slim model holds at most that share of the dense model's
    activations; the unstructured methods refuse it; a state saved before the option existed
    resumes at its default."""
    from metaprune.checkpoint import load_checkpoint
    from metaprune.cli import main

    checkpoint = train_tiny(tmp_path / "d", width=8)
    dense = load_checkpoint(checkpoint, with_optimizer=False).learner.model
    base = structured_prune_args(checkpoint, 0.5)
    assert main([*base, "--memory-budget", "0.45", "--out", str(tmp_path / "m")]) == 0
    assert "memory budget of 0.45" in capsys.readouterr().out
    state = json.loads((tmp_path / "m" / "state.json").read_text())
    slim = load_checkpoint(tmp_path / "m" / "round02", with_optimizer=False).learner.model
    x = torch.rand(2, 1, 12, 12)
    assert group_widths(slim, x) == state["final_widths"] != schedule(
        state["start_widths"], 0.5 ** 0.5, 1)[0]
    assert activation_bytes(slim, x) <= 0.45 * activation_bytes(dense, x)
    # the unstructured methods refuse the structured options, naming them
    assert main(["prune", str(checkpoint), "--method", "anp",
                 "--memory-budget", "0.5", "--out", str(tmp_path / "u")]) == 2
    assert "--memory-budget" in capsys.readouterr().err
    # a uniform run whose state predates the option is reused as it is
    assert main([*base, "--out", str(tmp_path / "old")]) == 0
    path = tmp_path / "old" / "state.json"
    old = json.loads(path.read_text())
    del old["config"]["memory"], old["final_widths"]
    path.write_text(json.dumps(old))
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "old")]) == 0
    assert "round 1:" not in capsys.readouterr().err  # nothing redone
