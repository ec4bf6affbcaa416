"""Pages generated from committed results must equal their regeneration: a number on them
can only change through its results file."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_benchmarks_readme_is_its_regeneration() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_readme
    finally:
        sys.path.pop(0)
    committed = (ROOT / "benchmarks" / "README.md").read_text()
    assert committed == make_readme.render(), (
        "benchmarks/README.md differs from its regeneration: run python benchmarks/make_readme.py")


def test_readme_results_table_is_its_regeneration() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_readme
    finally:
        sys.path.pop(0)
    committed = (ROOT / "README.md").read_text()
    assert make_readme.TABLE_START in committed
    assert committed == make_readme.render_root_readme(committed), (
        "README.md's results table differs from the CSVs: run python benchmarks/make_readme.py")
