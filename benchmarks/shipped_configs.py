"""The shipped CPU configs as a user gets them: each one's dense model, its accuracy and time.

    python benchmarks/shipped_configs.py

For every ``configs/*_cpu.yaml``, takes the newest committed results file of
``out_of_the_box.py`` (``results/*.md`` whose command ran that config) that ran the config as it
is today: the file at the results' git commit, comments aside, equals today's. A result never
describes another version of a config; a config with no such file is listed as not measured.
Writes ``results/shipped_configs.md`` (+ .csv): the dense model's accuracy on the config's fixed
test tasks, its meta-training time on the machine that ran it, and the published MAML number
for the same benchmark (``results/published.csv``) where there is one.
"""

from __future__ import annotations

import argparse
import csv
import re
import shlex
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, dense_row, file_at_commit, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def header_fields(md: Path) -> dict[str, str]:
    """The command, date, machine and git commit a results file's header records."""
    fields: dict[str, str] = {}
    for line in md.read_text().splitlines()[:8]:
        if line.startswith("- command: `"):
            fields["command"] = line[len("- command: `"):].rstrip("`")
        elif line.startswith("- date: "):
            fields["date"] = line[len("- date: "):]
        elif line.startswith("- machine: "):
            fields["machine"] = line[len("- machine: "):]
        elif "git commit " in line:
            fields["commit"] = line.split("git commit ", 1)[1].strip()
    return fields


def config_of(command: str) -> str | None:
    """The ``--config`` a benchmark command ran with, if it is out_of_the_box.py."""
    if "out_of_the_box.py" not in command:
        return None
    words = shlex.split(command)
    if "--config" not in words:
        return None
    return words[words.index("--config") + 1]


def published(config: dict, results: Path) -> dict[str, str] | None:
    data, learner = config["data"], config["learner"]

    def plain(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    with (results / "published.csv").open() as f:
        for r in csv.DictReader(f):
            if (plain(r["dataset"]), r["learner"], int(r["n_way"]), int(r["k_shot"])) == (
                    plain(data["dataset"]), learner["name"], data["n_way"], data["k_shot"]):
                return r
    return None


def row_for(config: Path, results: Path) -> dict:
    today = yaml.safe_load(config.read_text())
    data, train, model = today["data"], today["train"], today["model"]
    row: dict = {"config": str(config.relative_to(ROOT)),
                 "benchmark": f"{data['dataset']} {data['n_way']}-way {data['k_shot']}-shot",
                 "network": f"{model['name']} {model.get('kwargs', {})}",
                 "meta_training": f"{train['iterations']} x {train['meta_batch']} tasks"}
    found = []
    for md in sorted(results.glob("*.md")):
        fields = header_fields(md)
        if config_of(fields.get("command", "")) != row["config"] or "commit" not in fields:
            continue
        as_run = file_at_commit(fields["commit"], row["config"])
        if as_run is not None and yaml.safe_load(as_run) == today:
            found.append((fields["date"], md, fields))
    if not found:
        return {**row, "dense_accuracy": "not measured"}
    _, md, fields = max(found, key=lambda f: f[0])
    dense = dense_row(md.stem, results)
    row.update(dense_accuracy=float(dense["accuracy"]), ci95=float(dense["ci95"]),
               test_tasks=int(dense["tasks"]),
               train_minutes=round(float(dense["work_seconds"]) / 60, 1))
    ref = published(today, results)
    if ref is not None:
        row.update(published=float(ref["accuracy"]), published_by=ref["source"],
                   below_published=round(float(ref["accuracy"]) - row["dense_accuracy"], 2))
    row.update(results=md.name, machine=fields.get("machine", ""),
               run_at_commit=fields["commit"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="shipped_configs")
    args = p.parse_args()
    rows = [row_for(c, RESULTS) for c in sorted((ROOT / "configs").glob("*_cpu.yaml"))]
    notes = ("Every `configs/*_cpu.yaml`, its dense model as `metaprune train --config` gives it, "
             "from the newest results file of `benchmarks/out_of_the_box.py` that ran the config "
             "as it is now (the config at the results' commit equals today's). "
             "`train_minutes`: the meta-training time the checkpoint records, with the default "
             "worker processes on the machine named in `machine`. `published`: the same "
             "benchmark in `published.csv`, on the full dataset at its original resolution; "
             "the configs' own comments say where they differ from it (e.g. the reduced "
             "mini-ImageNet copy).")
    write_results(RESULTS / args.name, "Shipped CPU configs: dense accuracy and time", notes,
                  rows)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
