"""Templated pages: prose whose every number is a placeholder read from a committed results CSV.

A placeholder is ``{{STEM FILTER... | FORMAT}}``:

- ``STEM`` names ``benchmarks/results/STEM.csv``;
- each ``FILTER`` is ``column=value`` (shell quoting for spaces; ``column=a,b`` matches either,
  unless a row's value is ``a,b`` itself);
- ``FORMAT`` is text with ``{EXPR}`` or ``{EXPR:SPEC}`` fields (``SPEC`` as in Python's
  ``format``), where ``EXPR`` is a Python expression over the selected row's columns (names
  with other characters than letters, digits and ``_`` have them replaced by ``_``). Where
  the filters select one row a column is a number (or its text); where they select several, a
  list, for ``min``/``max``/``len``/``sum``. Shorthands: ``diff`` is
  ``{diff_vs_dense:+.2f} +- {diff_ci95:.2f}``,
  ``vs`` is ``{anp_minus_baseline:+.2f} +- {ci95:.2f}``,
  ``acc`` is ``{accuracy:.2f}`` and ``accci`` is ``{accuracy:.2f} +- {ci95:.2f}``;
  ``verdict(diff, ci95, within)`` words a target "within ``within`` points of dense" (``met``,
  ``inconclusive`` or ``missed``). ``each FORMAT`` formats every selected row by itself and
  joins them with ", " (in the CSV's order): ``{{STEM sparsity=0.85,0.9 | each vs}}``.

Selecting no row is an error, and so is a number in the template outside a placeholder
(see ``stray_numbers``), so a page made this way cannot quote a result its CSV does not hold.
"""

from __future__ import annotations

import csv
import math
import re
import shlex
from functools import cache
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PLACEHOLDER = re.compile(r"\{\{((?:[^{}]|\{[^{}]*\})+)\}\}")
FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")
SHORTHANDS = {
    "diff": "{diff_vs_dense:+.2f} +- {diff_ci95:.2f}",
    "vs": "{anp_minus_baseline:+.2f} +- {ci95:.2f}",
    "acc": "{accuracy:.2f}",
    "accci": "{accuracy:.2f} +- {ci95:.2f}",
}
# a measured number: a decimal, or an integer with a thousands separator
NUMBER = re.compile(r"(?<![\w.])[+-]?(?:\d+\.\d+(?:e-?\d+)?|\d{1,3}(?:,\d{3})+)"
                    r"(?=x\b|[^\w.]|\.\s|\.$|$)")


def verdict(diff: float, ci95: float, within: float) -> str:
    """Whether a paired difference to dense of ``diff +- ci95`` points meets "within ``within``
    points of dense": "met" where the whole 95% CI clears the threshold, "missed" where the whole
    CI falls short of it, "inconclusive" where the CI contains it."""
    if diff - ci95 >= -within:
        return "met"
    if diff + ci95 < -within:
        return "missed"
    return "inconclusive"


SAFE = {"abs": abs, "min": min, "max": max, "len": len, "sum": sum, "round": round,
        "verdict": verdict}


class TemplateError(ValueError):
    """A placeholder that does not select a row, or names a column its CSV lacks."""


@cache
def rows_of(stem: str, results: Path = RESULTS) -> tuple[dict[str, str], ...]:
    with (results / f"{stem}.csv").open() as f:  # "#" lines: a script's trailing notes
        return tuple(csv.DictReader(line for line in f if not line.startswith("#")))


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def select(stem: str, filters: list[str], results: Path = RESULTS) -> list[dict[str, str]]:
    """The rows of ``stem``.csv that match every ``column=value`` filter."""
    rows = rows_of(stem, results)
    wanted = []
    for f in filters:
        column, _, value = f.partition("=")
        if rows and column not in rows[0]:
            raise TemplateError(f"{stem}.csv has no column {column!r}")
        # "a,b": either, unless a row holds the whole text (labels with commas)
        exact = any(r[column] == value for r in rows)
        wanted.append((column, {value} if exact else set(value.split(","))))
    found = [r for r in rows if all(r[c] in values for c, values in wanted)]
    if not found:
        raise TemplateError(f"no row of {stem}.csv matches {' '.join(filters)}")
    return found


def fill(placeholder: str, results: Path = RESULTS) -> str:
    """The text of one placeholder (what is between the double braces)."""
    head, sep, form = placeholder.partition("|")
    if not sep:
        raise TemplateError(f"placeholder without '| FORMAT': {placeholder!r}")
    stem, *filters = shlex.split(head)
    found = select(stem, filters, results)
    if form.strip().startswith("each "):  # one row at a time
        one = form.strip()[len("each "):]
        return ", ".join(_format(placeholder, one, [r]) for r in found)
    return _format(placeholder, form, found)


def _format(placeholder: str, form: str, found: list[dict[str, str]]) -> str:
    """``form`` over the columns of the rows ``found``."""
    env: dict[str, object] = {}
    for column in found[0]:
        values = [_value(r[column]) for r in found]
        env[re.sub(r"\W", "_", column)] = values[0] if len(found) == 1 else values
    form = SHORTHANDS.get(form.strip(), form.strip())

    def field(m: re.Match) -> str:
        expr, spec = m[1].strip(), m[2] or ""
        try:
            value = eval(expr, {"__builtins__": SAFE, "math": math}, env)  # noqa: S307 (committed template)
        except Exception as e:  # noqa: BLE001 (reported with the placeholder)
            raise TemplateError(f"{{{{{placeholder}}}}}: {expr!r}: {e}") from e
        if value is None or value == "":
            raise TemplateError(f"{{{{{placeholder}}}}}: {expr!r} is empty")
        return format(value, spec)

    return FIELD.sub(field, form)


def render(template: str, results: Path = RESULTS) -> str:
    """``template`` with every placeholder replaced by its value."""
    return PLACEHOLDER.sub(lambda m: fill(m[1], results), template)


def stray_numbers(template: str) -> list[str]:
    """Measured-looking numbers (decimals, integers with thousands separators) written into the
    template outside placeholders: there should be none."""
    prose = PLACEHOLDER.sub("", template)
    prose = re.sub(r"\]\([^)]*\)", "]()", prose)  # link targets (file names) are not numbers
    prose = re.sub(r"`[^`]*`", "``", prose)       # nor are options in code
    return NUMBER.findall(prose)
