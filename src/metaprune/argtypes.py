"""Range-checked argparse types: a bad number is refused up front, naming the flag
(argparse prefixes the message with ``argument --flag:``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either bound optional)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> Callable[[str], float]:
    """A finite number between low and high (each bound closed unless ``*_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        bad = (not math.isfinite(value)
               or (low is not None and (value <= low if low_open else value < low))
               or (high is not None and (value >= high if high_open else value > high)))
        if bad:
            raise argparse.ArgumentTypeError(
                f"must be a finite number {_bounds(low, high, low_open, high_open)}, "
                f"got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _bounds(low, high, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts) or "a number"


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
FRACTION = real(0, 1, low_open=True, high_open=True)   # a sparsity, strictly between 0 and 1
