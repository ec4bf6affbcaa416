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


def test_templated_pages_are_their_regeneration(make_readme) -> None:
    """docs/findings.md (and any other templated page) equals its template rendered from the
    committed CSVs."""
    assert make_readme.TEMPLATED_PAGES
    for page in make_readme.TEMPLATED_PAGES:
        assert page.read_text() == make_readme.render_templated(page), (
            f"{page.relative_to(ROOT)} differs from its regeneration: edit its template "
            "and run python benchmarks/make_readme.py")


def test_templated_blocks_are_their_regeneration(make_readme) -> None:
    """The generated blocks of docs/pruning.md (its out-of-the-box results)."""
    assert make_readme.TEMPLATED_BLOCKS
    for page, blocks in make_readme.TEMPLATED_BLOCKS.items():
        committed = page.read_text()
        assert all(start in committed and end in committed for start, end, _ in blocks)
        assert committed == make_readme.render_blocks(page, committed), (
            f"{page.relative_to(ROOT)} differs from its regeneration: edit the template and run "
            "python benchmarks/make_readme.py")


def test_templates_write_no_number_by_hand(make_readme) -> None:
    import page_template

    templates = [t for blocks in make_readme.TEMPLATED_BLOCKS.values() for _, _, t in blocks]
    assert make_readme.README_TEMPLATES
    for template in [*make_readme.TEMPLATED_PAGES.values(), *templates,
                     *make_readme.README_TEMPLATES]:
        stray = page_template.stray_numbers(template.read_text())
        assert not stray, f"{template.relative_to(ROOT)} copies numbers by hand: {stray}"


def test_placeholder_reads_its_row_and_refuses_a_missing_one(make_readme, tmp_path) -> None:
    import page_template

    (tmp_path / "r.csv").write_text("method,target_sparsity,diff_vs_dense,diff_ci95\n"
                                    "anp,0.85,-1.2,0.38\nlobs,0.85,-0.5,0.3\n")
    text = "anp {{r method=anp target_sparsity=0.85 | diff}}; both {{r target_sparsity=0.85 | " \
           "{min(diff_vs_dense):+.1f}}}"
    assert page_template.render(text, tmp_path) == "anp -1.20 +- 0.38; both -1.2"
    each = "{{r target_sparsity=0.85 | each {method} {diff_vs_dense:+.1f}}}"
    assert page_template.render(each, tmp_path) == "anp -1.2, lobs -0.5"
    with pytest.raises(page_template.TemplateError, match="no row"):
        page_template.render("{{r method=magnitude | diff}}", tmp_path)
    with pytest.raises(page_template.TemplateError, match="no column"):
        page_template.render("{{r learner=maml | diff}}", tmp_path)
    text = "kept 1.35 of {{r method=anp | diff}} (`--x 0.5`), 1.05x, 85,732 bytes, 85%"
    assert page_template.stray_numbers(text) == ["1.35", "1.05", "85,732"]


@pytest.mark.parametrize(("diff", "ci", "word"), [
    (-0.64, 0.35, "met"), (-1.2, 0.38, "inconclusive"), (-2.24, 0.38, "missed"), (0.5, 0.3, "met")])
def test_verdict_meets_a_target_only_with_the_whole_ci(make_readme, diff, ci, word) -> None:
    import page_template

    assert page_template.verdict(diff, ci, 1.0) == word


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.split("# --- README test command (keep identical to README.md) ---\n", 1)[1]
    command = command.strip().splitlines()[0]
    assert "python -m pytest" in command and f"\n{command}\n" in readme
