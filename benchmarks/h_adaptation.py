"""How much does adaptation change what ANP sees? ANP's H against L-OBS's H, per layer.

ANP and L-OBS differ in one thing only: ANP records each layer's inputs with the network
ADAPTED to each scoring task, L-OBS with the meta-initialisation (same tasks, same data, same
saliency and compensation). If the inner loop barely moves the layers below a layer, the two
criteria see almost the same H and must rank its weights alike. This script measures that,
and sets it against a null: the same criterion scored on a second, disjoint batch of scoring
tasks (the sampling noise that any 20-task criterion has anyway).

For each state (the dense model, or a method's round checkpoint of a ``sparsity_curve.py``
run) and each prunable layer it writes the rows of
``metaprune.pruning.diagnostics.adaptation_shift`` (weight change under the inner loop, relative
H difference, saliency rank correlation and agreement of the next round's pruned weights; each
adapted-vs-un-adapted number next to the same number for two disjoint scoring-task batches),
plus a summary per state. Batch a is the run's own scoring tasks of the next round. The first
layer's input is the image, which adaptation cannot change: its ``dH_adapt`` is 0.

    OMP_NUM_THREADS=1 METAPRUNE_DATA=../shared/data python benchmarks/h_adaptation.py \\
        --run-dir runs/sparsity_A_d2700_enddense_ps5 --states dense,anp/round08 \\
        --name h_adaptation_A
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import RESULTS, markdown_table, write_results

from metaprune.checkpoint import load_checkpoint, read_meta
from metaprune.data.tasks import OffsetSampler
from metaprune.experiment import load_split, train_sampler
from metaprune.masks import prunable_weights
from metaprune.pruning.diagnostics import adaptation_shift
from metaprune.pruning.pruner import scoring_tasks

# the second task batch starts this far after the run's own scoring tasks (never overlaps them)
OTHER_BATCH_OFFSET = 1_000_000


def measure_run(run: Path, states: list[str], score_tasks: int, rows: list[dict]) -> str:
    """Append the rows of each state of one run; return its one-line description."""
    cfg = read_meta(run / "dense")["config"]
    sampler = train_sampler(cfg, load_split(cfg["data"], "train_split"))
    first_round = run / "anp" / "round01.json"
    if not first_round.exists():
        raise SystemExit(f"{first_round}: missing (the run's pruning options are read from it)")
    run_meta = json.loads(first_round.read_text())
    targets = run_meta["pruning"]["targets"]
    opts = {k: v for k, v in run_meta["pruning"]["criterion_options"].items()
            if k in ("h_data", "damping", "patch_stride")}
    include = {k: run_meta["pruning"].get(k, True) for k in ("include_first", "include_last")}
    for state in states:
        path = run / ("dense" if state == "dense" else state)
        learner = load_checkpoint(path, with_optimizer=False).learner
        pruned_names = set(prunable_weights(learner.model, **include))
        names = prunable_weights(learner.model)
        rnd = 0 if state == "dense" else int(state.split("round")[-1])
        if rnd >= len(targets):
            raise SystemExit(f"state '{state}' is the last round ({len(targets)}): no next "
                             "round")
        target = targets[rnd]  # the cumulative sparsity the next round prunes to
        # the run's own scoring tasks of the next round, and a disjoint second batch
        tasks_a = scoring_tasks(sampler, score_tasks, rnd + 1)
        tasks_b = scoring_tasks(OffsetSampler(sampler, OTHER_BATCH_OFFSET), score_tasks, rnd + 1)
        for r in adaptation_shift(learner, tasks_a, tasks_b, target, names, **opts):
            rows.append({"run": run.name, "state": state, "layer": r["layer"],
                         "pruned_in_run": r["layer"] in pruned_names,
                         **{k: round(v, 4) for k, v in r.items() if k != "layer"}})
            print(rows[-1], flush=True)
    lc = cfg["learner"]
    return (f"`{run.name}`: {cfg['data']['dataset']} {cfg['data']['n_way']}-way "
            f"{cfg['data']['k_shot']}-shot, model {cfg['model']['name']}, learner {lc['name']} "
            f"(training inner loop: {lc.get('inner_steps')} steps, lr {lc.get('inner_lr')}); "
            f"H options {opts}")


def summary(rows: list[dict]) -> list[dict]:
    """Per run and state: the mean over the hidden layers that the run prunes (not the first
    layer, whose input adaptation cannot change, and not the head), and the head on its own."""
    out = []
    keys = dict.fromkeys((r["run"], r["state"]) for r in rows)
    for run, state in keys:
        sel = [r for r in rows if (r["run"], r["state"]) == (run, state)]
        hidden = [r for r in sel[1:-1] if r["pruned_in_run"]]
        head = sel[-1]

        def mean(key: str, group: list[dict] = hidden) -> float:
            return round(sum(r[key] for r in group) / len(group), 3) if group else float("nan")

        out.append({"run": run, "state": state, "next_target": sel[0]["target"],
                    "hidden_layers": len(hidden),
                    "hidden_dH_adapt": mean("dH_adapt"), "hidden_dH_tasks": mean("dH_tasks"),
                    "hidden_agree_adapt": mean("agree_adapt"),
                    "hidden_agree_tasks": mean("agree_tasks"),
                    "head_pruned": head["pruned_in_run"], "head_dH_adapt": head["dH_adapt"],
                    "head_dH_tasks": head["dH_tasks"], "head_agree_adapt": head["agree_adapt"],
                    "head_agree_tasks": head["agree_tasks"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, action="append",
                    help="a sparsity_curve run dir (repeatable)")
    ap.add_argument("--states", default="dense",
                    help="comma-separated: 'dense' or METHOD/roundNN checkpoints of the run")
    ap.add_argument("--score-tasks", type=int, default=20)
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()
    rows: list[dict] = []
    settings = []
    for run_dir in args.run_dir:
        settings.append(measure_run(Path(run_dir), args.states.split(","), args.score_tasks,
                                    rows))
    notes = ("Runs: " + "; ".join(settings) + f". {args.score_tasks} scoring tasks: batch a = "
             "the run's own scoring tasks of the next round, batch b = a disjoint batch; ANP "
             "adapts with the learner's training inner loop. "
             "`weight_change`: ||W'-W||/||W|| after the inner loop (mean over batch a). "
             "`dH_adapt`: ||H_anp - H_lobs||_F/||H_lobs||_F (batch a); `dH_tasks`: "
             "||H_lobs(b) - H_lobs(a)||_F/||H_lobs(a)||_F. `rank_corr_*`: Spearman correlation "
             "of the OBS saliencies of the unpruned weights, anp vs lobs on batch a (adapt) and "
             "anp on a vs b (tasks). `agree_*`: of the weights anp (batch a) prunes in the next "
             "round (to `next_target`), the fraction that lobs on batch a (adapt) or anp on "
             "batch b (tasks) prunes too; `agree_tasks_lobs`: the same for lobs a vs b. "
             "`pruned_in_run`: whether the run prunes this layer.\n\n## Summary\n\n"
             "Hidden layers: the layers the run prunes other than the first layer and the "
             "head (means over them); head: the last layer (pruned by the run or not).\n\n"
             + markdown_table(summary(rows)) + "\n\n## Per layer\n")
    write_results(Path(args.results_dir) / args.name,
                  "Adapted vs un-adapted H: what separates ANP from L-OBS", notes, rows)


if __name__ == "__main__":
    main()
