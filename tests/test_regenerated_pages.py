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
