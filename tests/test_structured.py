"""Structured ANP: the physically slimmed Conv4 computes exactly what the masked one does;
group OBS is exact; the slim model goes through export, runtime and checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers import structured_prune_args, train_tiny
from torch.func import functional_call

from metaprune.data.tasks import Task
from metaprune.deploy.format import load_mpz, mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel
from metaprune.learners import build_learner
from metaprune.models import build_model
from metaprune.pruning.hessian import damped_inverse
from metaprune.pruning.structured import (
    group_obs,
    group_widths,
    plan_step,
    schedule,
    slim_learner,
    slim_model,
)


def tasks(n: int = 3, seed: int = 0) -> list[Task]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(Task(torch.rand(5, 1, 28, 28, generator=g), torch.arange(5),
                        torch.rand(10, 1, 28, 28, generator=g), torch.arange(5).repeat(2)))
    return out


def learner(seed: int = 0):
    torch.manual_seed(seed)
    return build_learner("maml", build_model("conv4", width=16), inner_lr=0.3,
                         eval_inner_steps=2)


def test_slim_model_equals_masked_model() -> None:
    lr = learner()
    plan, masks = plan_step(lr, tasks(), [12, 10, 8, 6])
    assert plan.widths == [12, 10, 8, 6]
    slim, _ = slim_model(lr.model, plan)
    assert group_widths(slim) == [12, 10, 8, 6]
    n_full = sum(p.numel() for p in lr.model.parameters())
    assert sum(p.numel() for p in slim.parameters()) < 0.5 * n_full
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = lr.model(x)          # masked full-width model (batch-statistics BatchNorm)
        got = slim(x)
    assert (ref - got).abs().max().item() <= 1e-5
    # the same after adaptation: slim learner adapts to the same function
    t = tasks(1, seed=5)[0]
    a_full = lr.adapt(t.support_x, t.support_y, steps=2)
    sl = slim_learner(lr, plan)
    a_slim = sl.adapt(t.support_x, t.support_y, steps=2)
    with torch.no_grad():
        out_full = functional_call(lr.model, a_full.params, (t.query_x,))
        out_slim = functional_call(sl.model, a_slim.params, (t.query_x,))
    assert (out_full - out_slim).abs().max().item() <= 1e-4
    # the masked model's removed channels really are cut
    for i, kept in enumerate(plan.keep):
        w = dict(lr.model.named_parameters())[f"features.{i}.0.weight"]
        gone = sorted(set(range(16)) - set(kept))
        assert bool((w[gone] == 0).all())


def test_l1_and_random_channel_baselines() -> None:
    """l1 keeps the filters with the largest L1 norm and leaves the consumers uncompensated;
    random is reproducible given its seed; an unknown criterion is refused."""
    lr = learner()
    before = {n: p.detach().clone() for n, p in lr.model.named_parameters()}
    plan, masks = plan_step(lr, tasks(), [12, 10, 8, 6], channel_criterion="l1")
    for i, kept in enumerate(plan.keep):
        norms = before[f"features.{i}.0.weight"].abs().flatten(1).sum(1)
        expect = sorted(torch.argsort(norms, descending=True)[: plan.widths[i]].tolist())
        assert kept == expect
    params = dict(lr.model.named_parameters())
    for n in ("features.1.0.weight", "head.weight"):   # consumers: masked, not compensated
        assert torch.equal(params[n], before[n] * masks[n])
    a = plan_step(learner(), tasks(), [8, 8, 8, 8], channel_criterion="random", seed=3)[0]
    b = plan_step(learner(), tasks(), [8, 8, 8, 8], channel_criterion="random", seed=3)[0]
    c = plan_step(learner(), tasks(), [8, 8, 8, 8], channel_criterion="random", seed=4)[0]
    assert a.keep == b.keep and a.keep != c.keep
    with pytest.raises(ValueError, match="channel criterion"):
        plan_step(learner(), tasks(), [8, 8, 8, 8], channel_criterion="taylor")


def test_group_obs_matches_least_squares() -> None:
    """Removing a group with OBS compensation = refitting the other weights by least squares
    on the layer inputs (H = mean x x^T, no damping needed with enough samples)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 12, generator=g, dtype=torch.float64)
    W = torch.randn(3, 12, generator=g, dtype=torch.float64)
    H = X.T @ X / len(X)
    groups = [torch.arange(3 * c, 3 * c + 3) for c in range(4)]
    removed, Wc, costs = group_obs(W, damped_inverse(H, 0.0), groups, 1)
    Q = groups[removed[0]]
    keep = torch.tensor([i for i in range(12) if i not in Q.tolist()])
    Y = X @ W.T
    sol = torch.linalg.lstsq(X[:, keep], Y).solution.T
    assert torch.allclose(Wc[:, keep], sol, atol=1e-8)
    assert bool((Wc[:, Q] == 0).all())
    err = ((X @ Wc.T - Y) ** 2).sum(1).mean()
    assert costs[0] == pytest.approx(float(err), rel=1e-6)
    # greedy picks the cheapest group
    all_costs = []
    for gi in range(4):
        _, _, c = group_obs(W, damped_inverse(H, 0.0), [groups[gi]], 1)
        all_costs.append(c[0])
    assert removed[0] == min(range(4), key=all_costs.__getitem__)


def test_schedule_and_errors() -> None:
    assert schedule([32, 32, 32, 32], 0.5, 2)[-1] == [16, 16, 16, 16]
    assert schedule([32, 32], 0.25, 1) == [[8, 8]]
    with pytest.raises(ValueError):
        schedule([32], 0.0, 1)
    with pytest.raises(ValueError, match="widths"):
        plan_step(learner(), tasks(1), [17, 16, 16, 16])


def test_slim_model_through_mpz_and_runtime(tmp_path) -> None:
    lr = learner()
    plan, _ = plan_step(lr, tasks(), [8, 8, 8, 8])
    sl = slim_learner(lr, plan)
    path = save_mpz(tmp_path / "s.mpz", mpz_from_learner(sl))
    back = load_mpz(path)
    assert back.meta["model"]["name"] == "conv4"
    assert back.meta["model"]["kwargs"]["slim"]["features.0.0.weight"] == [8, 1, 3, 3]
    for n, p in sl.model.named_parameters():
        assert torch.equal(back.params[n], p.detach()), n
    dm = DeviceModel.load(path)
    t = tasks(1, seed=2)[0]
    ref = sl.adapt(t.support_x, t.support_y, steps=2)
    got = dm.adapt(t.support_x, t.support_y)
    for n, p in ref.params.items():
        assert (got.params[n] - p.detach()).abs().max().item() <= 1e-6, n


def test_prune_cli_anp_structured(tmp_path, capsys) -> None:
    """`metaprune prune --method anp-structured` writes a conv4-slim checkpoint with the
    keep fraction (explicit, or sqrt(1 - sparsity)) that evaluate/export accept."""
    import json

    from metaprune.checkpoint import load_checkpoint
    from metaprune.cli import main
    from metaprune.pruning.cli import structured_keep

    dense = str(train_tiny(tmp_path / "d", width=8))
    rc = main([*structured_prune_args(dense, 0.75), "--out", str(tmp_path / "s")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[8, 8, 8, 8] -> [4, 4, 4, 4]" in out            # keep sqrt(1 - 0.75) = 0.5
    ck = load_checkpoint(tmp_path / "s" / "round02", with_optimizer=False)
    assert group_widths(ck.learner.model) == [4, 4, 4, 4]
    assert ck.meta["structured"]["widths"] == [4, 4, 4, 4]
    assert group_widths(load_checkpoint(tmp_path / "s" / "round01").learner.model) == [6] * 4
    base = ["prune", dense, "--method", "anp-structured", "--rounds", "2", "--retrain-iters",
            "1", "--meta-batch", "2", "--tasks", "2", "--out", str(tmp_path / "s"),
            "--no-progress"]
    before = (tmp_path / "s" / "round02.safetensors").read_bytes()
    assert main([*base, "--sparsity", "0.75"]) == 0       # finished: reused as it is
    assert (tmp_path / "s" / "round02.safetensors").read_bytes() == before
    capsys.readouterr()
    assert main([*base, "--sparsity", "0.9"]) == 2        # other settings into the same --out
    assert "other settings" in capsys.readouterr().err
    assert main([*base, "--sparsity", "0.75", "--schedule", "0.5"]) == 2
    assert "does not use --schedule" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "s" / "round02"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 4
    assert main(["export", str(tmp_path / "s" / "round02"), "--out",
                 str(tmp_path / "s.mpz")]) == 0
    from metaprune.deploy.format import load_mpz

    mpz = load_mpz(tmp_path / "s.mpz")  # the slim weights round-trip exactly
    for n, p in ck.learner.model.named_parameters():
        assert torch.equal(mpz.params[n], p.detach()), n
    # --keep overrides the sparsity mapping; bad values name the option
    assert structured_keep(0.85, 0.25) == 0.25
    assert structured_keep(0.0) == 1.0
    with pytest.raises(ValueError, match="--keep"):
        structured_keep(0.5, 1.5)
    capsys.readouterr()
    assert main(["prune", dense, "--method", "anp-structured", "--keep", "0",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--keep" in capsys.readouterr().err
    # the channel baselines go through the same command
    rc = main(["prune", dense, "--method", "l1-structured", "--sparsity", "0.75", "--rounds",
               "1", "--retrain-iters", "0", "--tasks", "2", "--out", str(tmp_path / "l1"),
               "--no-progress"])
    assert rc == 0 and "l1-structured: channels [8, 8, 8, 8] -> [4, 4, 4, 4]" in \
        capsys.readouterr().out
    l1 = load_checkpoint(tmp_path / "l1" / "round01", with_optimizer=False)
    assert l1.meta["structured"]["method"] == "l1-structured"
    full = load_checkpoint(dense, with_optimizer=False).learner.model
    norms = full.features[0][0].weight.detach().abs().flatten(1).sum(1)
    kept = sorted(torch.argsort(norms, descending=True)[:4].tolist())
    assert torch.equal(l1.learner.model.features[0][0].weight,
                       full.features[0][0].weight[kept])
