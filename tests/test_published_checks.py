"""Published targets and the notebooks' checks."""

import json

import pytest

from odesde.studies import gaussian_exact_errors as published
from odesde.utils.printed import half_unit, matches_printed
from odesde.companion.checks import CheckFailed, Checks


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


def test_checks_record_report_and_fail(tmp_path, monkeypatch):
    monkeypatch.setenv("ODESDE_FIGURES_DIR", str(tmp_path))
    monkeypatch.setenv("ODESDE_NOTEBOOK", "nb")
    checks = Checks()
    assert checks.printed("a printed value", 0.6549, "0.65")
    assert checks.close("a close value", 1.0 + 1e-9, 1.0, rtol=1e-8)
    assert not checks.less("an inequality", 2.0, 1.0)
    assert "❌" in checks.report().data and "2 of 3 checks hold" in checks.report().data
    with pytest.raises(CheckFailed, match="1 of 3 checks failed:\n- an inequality: paper ≤ 1, book 2"):
        checks.assert_all()
    saved = json.loads((tmp_path / "checks-nb.json").read_text())
    assert [c["passed"] for c in saved["checks"]] == [True, True, False]


def test_checks_pass_silently(tmp_path, monkeypatch):
    monkeypatch.setenv("ODESDE_FIGURES_DIR", str(tmp_path))
    checks = Checks()
    checks.true("a trend", True, paper="falls", book="falls")
    checks.assert_all()
