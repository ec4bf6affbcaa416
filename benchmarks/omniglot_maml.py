"""Issue-2 benchmark: MAML Conv4 on real Omniglot, 5-way 1-shot.

Meta-trains on images_background (with rotations), evaluates on images_evaluation over 600
fixed tasks, and writes benchmarks/results/omniglot_maml_<tag>.{csv,md}. Resumable: it reuses
``metaprune train``'s checkpoint in --run-dir, so re-running after a kill continues.

    METAPRUNE_DATA=../shared/data python benchmarks/omniglot_maml.py \
        --config configs/omniglot_5w1s_cpu.yaml --run-dir runs/omniglot_5w1s
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _report import RESULTS, header, markdown_table, write_csv

from metaprune.cli import main as metaprune_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--config", default="configs/omniglot_5w1s_cpu.yaml")
    ap.add_argument("--run-dir", default="runs/omniglot_5w1s")
    ap.add_argument("--tag", default="5w1s_conv4_cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()
    t0 = time.perf_counter()
    argv = ["train", "--config", args.config, "--out", args.run_dir, "--device", args.device]
    for s in args.set:
        argv += ["--set", s]
    rc = metaprune_main(argv)
    if rc:
        raise SystemExit(rc)
    wall = time.perf_counter() - t0
    doc = json.loads((Path(args.run_dir) / "model.json").read_text())
    cfg, test = doc["config"], doc["metrics"]["test"]
    row = {"setting": f"Omniglot {cfg['data']['n_way']}-way {cfg['data']['k_shot']}-shot",
           "model": f"{cfg['model']['name']}-{cfg['model']['kwargs']}",
           "learner": cfg["learner"]["name"],
           "train_split": cfg["data"]["train_split"], "test_split": cfg["data"]["test_split"],
           "iterations": doc["iteration"], "meta_batch": cfg["train"]["meta_batch"],
           "inner_steps_train": cfg["learner"]["inner_steps"],
           "inner_steps_test": cfg["learner"]["eval_inner_steps"],
           "accuracy": round(100 * test["accuracy"], 2), "ci95": round(100 * test["ci95"], 2),
           "test_tasks": test["tasks"], "train_seconds": round(doc.get("train_seconds", 0), 1),
           "wall_seconds_this_invocation": round(wall, 1), "device": args.device,
           "data": "full Omniglot (shared/data), background+rotations -> evaluation"}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    write_csv(results / f"omniglot_maml_{args.tag}.csv", [row])
    md = header(f"MAML on Omniglot ({row['setting']})",
                "Full Omniglot from shared/data: meta-train on images_background (964 "
                "characters x 4 rotations), meta-test on images_evaluation (659 characters), "
                "28x28, 600 fixed test tasks with 15 queries per class.")
    md += "\n" + markdown_table([row]) + "\n"
    (results / f"omniglot_maml_{args.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
