"""Matching a computed value to a published number as printed.

A paper prints a value to some digits; the book's value reproduces it when it rounds to the
same digits, i.e. lies within half a unit of the last printed digit. ``"-"`` (the paper's mark
for a divergent scheme) is matched only by ``inf`` and ``"0"`` only by an exact zero.
"""

from __future__ import annotations

__all__ = ["half_unit", "matches_printed"]


def half_unit(printed: str) -> float:
    """Half a unit of the last printed digit: ``"0.65"`` -> 0.005, ``"6.7E-4"`` -> 5e-6."""
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def matches_printed(value: float, printed: str) -> bool:
    """Whether ``value`` is within half a unit of the last digit of ``printed`` (``"-"`` = inf)."""
    if printed == "-":
        return value == float("inf")
    if printed == "0":  # the paper prints 0 only for an exact zero
        return abs(value) <= 1e-12
    return abs(value - float(printed)) <= half_unit(printed) * (1 + 1e-9)
