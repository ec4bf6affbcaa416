"""Confidence intervals and paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from metaprune.evaluation import EvalResult, mean_ci95, paired_difference


def test_ci95_is_normal_approximation() -> None:
    v = np.array([0.2, 0.4, 0.6, 0.8])
    m, ci = mean_ci95(v)
    assert m == pytest.approx(0.5)
    assert ci == pytest.approx(1.959963984540054 * v.std(ddof=1) / 2)


def test_paired_difference_is_per_task(tmp_path) -> None:
    a = EvalResult(np.array([0.9, 0.8, 0.7, 1.0]), "abc", 3)
    b = EvalResult(np.array([0.8, 0.8, 0.6, 0.9]), "abc", 3)
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.075)
    assert d.ci95 == pytest.approx(mean_ci95(np.array([0.1, 0.0, 0.1, 0.1]))[1])
    a.save(tmp_path / "a.json")
    back = EvalResult.load(tmp_path / "a.json")
    assert np.array_equal(back.accuracies, a.accuracies) and back.task_fingerprint == "abc"


def test_paired_difference_refuses_different_task_lists() -> None:
    a = EvalResult(np.array([0.9, 0.8]), "abc", 3)
    b = EvalResult(np.array([0.8, 0.8]), "xyz", 3)
    with pytest.raises(ValueError, match="abc.*xyz"):
        paired_difference(a, b)
