"""Pages generated from committed results must equal their regeneration: a number on them
can only change through its results file."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture
def make_readme(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import make_readme

    return make_readme


def test_benchmarks_readme_is_its_regeneration(make_readme) -> None:
    committed = (ROOT / "benchmarks" / "README.md").read_text()
    assert committed == make_readme.render(), (
        "benchmarks/README.md differs from its regeneration: run python benchmarks/make_readme.py")


def test_readme_numbers_are_their_regeneration(make_readme) -> None:
    """The demo block, the speed summary and the results table of README.md."""
    committed = (ROOT / "README.md").read_text()
    for marker in (make_readme.DEMO_START, make_readme.SPEED_START, make_readme.TABLE_START):
        assert marker in committed
    assert committed == make_readme.render_root_readme(committed), (
        "README.md differs from the committed results: run python benchmarks/make_readme.py")
