"""A notebook's checks: what fails a run, what is recorded as a difference, what is saved."""

import json

import pytest

from odesde.companion.checks import CheckFailed, Checks


@pytest.fixture
def figures_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ODESDE_FIGURES_DIR", str(tmp_path))
    return tmp_path


def test_a_failed_check_fails_the_run_and_names_itself(figures_dir):
    checks = Checks()
    assert checks.close("close", 1.0 + 1e-9, 1.0, rtol=1e-8)
    assert not checks.less("broken bound", 3.0, 2.0)
    with pytest.raises(CheckFailed, match="1 of 2 checks failed:\n- broken bound"):
        checks.assert_all()
    assert (figures_dir / "checks-interactive.json").is_file()  # saved before raising


def test_may_differ_is_recorded_either_way_and_never_gates(figures_dir):
    checks = Checks()
    assert checks.may_differ("holds", True, paper="a", book="b", why="unused")
    assert not checks.may_differ("differs", False, paper="< 3×", book="20×", why="damped")
    assert [c.kind for c in checks.entries] == ["trend", "differs"]
    assert checks.entries[0].note == "" and checks.entries[1].note == "damped"
    assert checks.failures == [] and [c.claim for c in checks.differences] == ["differs"]
    checks.assert_all()  # a documented difference alone does not fail
    saved = json.loads((figures_dir / "checks-interactive.json").read_text())["checks"]
    assert saved[1]["kind"] == "differs" and saved[1]["note"] == "damped"
    assert "1 differ from the criterion" in checks.report().data
    checks.true("a real trend", False, paper="up", book="down")
    with pytest.raises(CheckFailed, match="a real trend"):
        checks.assert_all()


def test_printed_digits():
    checks = Checks()
    assert checks.printed("rounds to the printed value", 0.123449, "0.1234")
    assert not checks.printed("one unit off", 0.1236, "0.1234")
