"""Published targets and matching printed digits."""

import pytest

from odesde.studies import gaussian_exact_errors as published
from odesde.utils.printed import half_unit, matches_printed


@pytest.mark.parametrize(
    "printed, half", [("0.65", 0.005), ("4.77", 0.005), ("6.7E-4", 5e-6), ("0.0904636", 5e-8),
                      ("5.467e-3", 5e-7), ("1805.14", 0.005)],
)
def test_half_unit_of_last_printed_digit(printed, half):
    assert half_unit(printed) == pytest.approx(half)


def test_matches_printed():
    assert matches_printed(0.6549, "0.65")
    assert not matches_printed(0.6551, "0.65")
    assert matches_printed(6.74e-4, "6.7E-4")
    assert not matches_printed(6.76e-4, "6.7E-4")
    assert matches_printed(float("inf"), "-")
    assert not matches_printed(1e9, "-")
    assert matches_printed(0.0, "0") and not matches_printed(1e-6, "0")


def test_v4_table_is_complete():
    table = published.PIERRET_GALERNE_V4
    assert len(table.cells) == len(table.schemes) * len(table.eps) == 16
    assert all(len(row) == 1 + len(table.n_points) for row in table.cells.values())
    assert table.printed("heun", 1e-3, 2, "normal") == "0.15"
    assert table.printed("em", 0.0, 0, "pT") == "0"
