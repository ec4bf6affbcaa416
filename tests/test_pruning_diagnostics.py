"""adaptation_shift: ANP's H against L-OBS's H, and the pruning decisions they lead to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_pruning_criteria import conv_learner, image_tasks

from metaprune.masks import prunable_weights
from metaprune.pruning import ANP, LOBS, allocate
from metaprune.pruning.diagnostics import adaptation_shift, spearman


def test_spearman_is_pearson_of_ranks_and_rejects_bad_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    ra, rb = np.argsort(np.argsort(a.numpy())), np.argsort(np.argsort(b.numpy()))
    assert spearman(a, b) == pytest.approx(float(np.corrcoef(ra, rb)[0, 1]), abs=1e-12)
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # monotone: same ranks
    assert spearman(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman(a, b[:10])


def test_without_inner_steps_anp_and_lobs_agree_exactly() -> None:
    learner = conv_learner(steps=0)
    rows = adaptation_shift(learner, image_tasks(seed=0), image_tasks(seed=1), target=0.5)
    assert [r["layer"] for r in rows] == prunable_weights(learner.model)
    for r in rows:
        assert r["weight_change"] == 0.0
        assert r["dH_adapt"] == 0.0
        assert r["rank_corr_adapt"] == pytest.approx(1.0)
        assert r["agree_adapt"] == 1.0
        assert r["dH_tasks"] > 1e-3  # other tasks, other inputs
        assert r["agree_tasks"] == r["agree_tasks_lobs"]  # anp IS lobs here


def test_same_task_batch_twice_gives_zero_sampling_noise() -> None:
    learner = conv_learner(steps=1)
    tasks = image_tasks(seed=0)
    for r in adaptation_shift(learner, tasks, tasks, target=0.3):
        assert r["dH_tasks"] == 0.0
        assert r["rank_corr_tasks"] == pytest.approx(1.0)
        assert r["agree_tasks"] == 1.0 and r["agree_tasks_lobs"] == 1.0


def test_values_match_the_criteria_and_the_pruner_selection_on_a_masked_learner() -> None:
    learner = conv_learner(steps=1)
    names = prunable_weights(learner.model)
    g = torch.Generator().manual_seed(3)
    params = learner.params()
    learner.set_masks({n: (torch.rand(params[n].shape, generator=g) >= 0.4).float()
                       for n in names})
    tasks_a, tasks_b = image_tasks(seed=0), image_tasks(seed=1)
    rows = {r["layer"]: r for r in adaptation_shift(learner, tasks_a, tasks_b, target=0.6)}
    h_anp = ANP().hessians(learner, tasks_a, names)
    h_lobs = LOBS().hessians(learner, tasks_a, names)
    # the first layer sees the images: adaptation cannot change its inputs
    assert rows[names[0]]["dH_adapt"] == 0.0 and rows[names[0]]["agree_adapt"] == 1.0
    for n in names[1:]:
        want = float((h_anp[n] - h_lobs[n]).norm() / h_lobs[n].norm())
        assert rows[n]["dH_adapt"] == pytest.approx(want, rel=1e-9) and want > 1e-4
    # agree_adapt is the overlap of the weights that anp's and lobs's next step would prune
    s_anp, s_lobs = ANP().score(learner, tasks_a, names), LOBS().score(learner, tasks_a, names)
    new_anp = allocate(s_anp.scores, 0.6, "layerwise", learner.masks)
    new_lobs = allocate(s_lobs.scores, 0.6, "layerwise", learner.masks)
    for n in names:
        alive = learner.masks[n] != 0
        pa, pl = (new_anp[n] == 0) & alive, (new_lobs[n] == 0) & alive
        assert rows[n]["agree_adapt"] == pytest.approx(float((pa & pl).sum() / pa.sum()))
        assert rows[n]["sparsity"] == pytest.approx(float((~alive).double().mean()))
    # weight change of the last layer, by hand
    last = names[-1]
    manual = np.mean([float((learner.adapt(t.support_x, t.support_y).params[last].detach()
                             - params[last].detach()).norm() / params[last].detach().norm())
                      for t in tasks_a])
    assert rows[last]["weight_change"] == pytest.approx(manual, rel=1e-6) and manual > 0


def test_rejects_empty_batches() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        adaptation_shift(conv_learner(), [], image_tasks(), target=0.5)


def test_cli_adaptation_shift_prints_one_row_per_layer(tmp_path, capsys) -> None:
    from test_pruning_schedule import DATA_OPTS, make_learner

    from metaprune.checkpoint import save_checkpoint
    from metaprune.cli import main

    learner = make_learner()
    data = {"dataset": "glyphs", "root": None, "options": DATA_OPTS, "n_way": 3, "k_shot": 1,
            "q_query": 2, "train_split": "train", "test_split": "test"}
    save_checkpoint(tmp_path / "dense", learner, {"data": data, "config": {"data": data}})
    assert main(["adaptation-shift", str(tmp_path / "dense"), "--tasks", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = prunable_weights(learner.model)
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:1 + len(names)]}
    assert list(rows) == names
    assert float(rows[names[0]][2]) == 0.0  # dH_adapt of the first layer: the images
    assert all(float(rows[n][2]) > 0 for n in names[1:])
    assert main(["adaptation-shift", str(tmp_path / "dense"), "--target", "1.5"]) == 2
    assert "--target" in capsys.readouterr().err
