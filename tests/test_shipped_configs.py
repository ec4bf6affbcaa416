"""benchmarks/shipped_configs.py: a config's dense result comes only from a run of that config as
it is today, the newest such run, with the numbers of its results file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import shipped_configs  # noqa: E402

MINI = ROOT / "configs" / "miniimagenet_5w1s_conv4_cpu.yaml"
OMNIGLOT5 = ROOT / "configs" / "omniglot_5w1s_cpu.yaml"
OLD_MINI = "ootb_miniimagenet"  # ran the 2000-iteration version of MINI
NOW_OMNIGLOT5 = "ootb_omniglot5_cpu_maxdrop"  # ran OMNIGLOT5 as it is today


def has_commit(md: Path) -> bool:
    sha = shipped_configs.header_fields(md)["commit"].split()[0]
    return subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=ROOT,
                          capture_output=True).returncode == 0


@pytest.fixture
def results(tmp_path: Path) -> Path:
    if not all(has_commit(RESULTS / f"{s}.md") for s in (OLD_MINI, NOW_OMNIGLOT5)):
        pytest.skip("this clone lacks the git history the results files name")
    shutil.copy(RESULTS / "published.csv", tmp_path)
    for stem in (OLD_MINI, NOW_OMNIGLOT5):
        for ext in (".md", ".csv"):
            shutil.copy(RESULTS / f"{stem}{ext}", tmp_path)
    return tmp_path


def test_a_run_of_another_version_of_the_config_is_not_used(results: Path) -> None:
    assert shipped_configs.config_of(
        shipped_configs.header_fields(results / f"{OLD_MINI}.md")["command"]) == \
        str(MINI.relative_to(ROOT))
    assert shipped_configs.row_for(MINI, results)["dense_accuracy"] == "not measured"


def test_the_numbers_are_the_results_files_and_the_newest_run_wins(results: Path) -> None:
    row = shipped_configs.row_for(OMNIGLOT5, results)
    dense = shipped_configs.dense_row(NOW_OMNIGLOT5, results)
    assert row["results"] == f"{NOW_OMNIGLOT5}.md"
    assert (row["dense_accuracy"], row["ci95"], row["test_tasks"]) == (
        float(dense["accuracy"]), float(dense["ci95"]), int(dense["tasks"]))
    assert row["train_minutes"] == round(float(dense["work_seconds"]) / 60, 1)
    assert row["below_published"] == round(98.7 - row["dense_accuracy"], 2)  # Finn et al. 2017
    # the same run, copied with a later date and other numbers: the later one is taken
    md = (results / f"{NOW_OMNIGLOT5}.md").read_text()
    date = shipped_configs.header_fields(results / f"{NOW_OMNIGLOT5}.md")["date"]
    (results / "later.md").write_text(md.replace(date, "2099-01-01 00:00 UTC"))
    (results / "later.csv").write_text((results / f"{NOW_OMNIGLOT5}.csv").read_text()
                                       .replace(dense["accuracy"], "12.34", 1))
    later = shipped_configs.row_for(OMNIGLOT5, results)
    assert (later["results"], later["dense_accuracy"]) == ("later.md", 12.34)
