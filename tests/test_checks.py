"""A chapter's checks: oracles, kinds, the registry, what fails a run, what is saved."""

import json
import textwrap

import pytest

from odesde.companion.checks import (
    ORACLES, CheckFailed, Checks, count_statuses, load_registry, status_of,
)

REGISTRY = textwrap.dedent("""\
    chapter:
      damped:
        claim: the error varies by less than 3x over k
        threshold: 3
        may_differ: true
        oracle: paper trend
        reason: diffusion damps sin(kx) at rate k^2
        source: digest R1
      ratio:
        claim: the ratio exceeds 10
        threshold: 10
        reason: a margin set before the run
        source: issue 14
    """)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    path = tmp_path / "criteria.yaml"
    path.write_text(REGISTRY)
    monkeypatch.setenv("ODESDE_CRITERIA", str(path))
    monkeypatch.setenv("ODESDE_FIGURES_DIR", str(tmp_path))
    monkeypatch.setenv("ODESDE_NOTEBOOK", "chapter")
    return tmp_path


def test_a_failed_check_fails_the_run_and_names_itself(registry):
    checks = Checks()
    assert checks.close("close", 1.0 + 1e-9, 1.0, rtol=1e-8, oracle="closed form")
    assert not checks.less("broken bound", 3.0, 2.0, oracle="paper trend")
    with pytest.raises(CheckFailed, match="1 of 2 checks failed:\n- broken bound"):
        checks.assert_all()
    saved = json.loads((registry / "checks-chapter.json").read_text())["checks"]  # saved first
    assert [c["oracle"] for c in saved] == ["closed form", "paper trend"]
    assert [c["gates"] for c in saved] == [True, True]


def test_every_oracle_and_kind_is_validated(registry):
    checks = Checks()
    for oracle in ORACLES:
        if oracle != "book criterion":
            checks.true(f"a claim against {oracle}", True, paper="p", book="b", oracle=oracle)
    with pytest.raises(ValueError, match="oracle='the paper'"):
        checks.true("no such oracle", True, paper="p", book="b", oracle="the paper")
    with pytest.raises(TypeError):
        checks.true("no oracle at all", True, paper="p", book="b")
    with pytest.raises(ValueError, match="kind='differs'"):
        checks.true("differs by hand", False, paper="p", book="b", oracle="paper trend",
                    kind="differs")
    with pytest.raises(ValueError, match="kind='guess'"):
        checks.add("unknown kind", True, paper="p", book="b", oracle="closed form", kind="guess")
    with pytest.raises(ValueError, match="oracle must be 'published'"):
        checks.true("matched to a closed form", True, paper="p", book="b", oracle="closed form",
                    kind="matched")
    with pytest.raises(ValueError, match="names its registry entry"):
        checks.less("an unregistered threshold", 1.0, 2.0, oracle="book criterion")


def test_book_criteria_come_from_the_registry(registry):
    checks = Checks()
    assert checks.threshold("ratio") == 10.0
    assert checks.less("ratio", 12.0, checks.threshold("ratio"), oracle="book criterion",
                       criterion="ratio", kind="trend") is False
    assert checks.entries[0].note == "a margin set before the run"
    with pytest.raises(KeyError, match="'unknown' is not declared for notebook 'chapter'"):
        checks.threshold("unknown")
    with pytest.raises(KeyError, match="not declared"):
        checks.less("ratio", 1.0, 2.0, oracle="book criterion", criterion="unknown")


def test_may_differ_only_for_registered_criteria_and_never_gates(registry):
    checks = Checks()
    assert checks.may_differ("damped", True, book="2x")
    assert not checks.may_differ("damped", False, book="20x", claim="the error at eta = 0.1")
    assert [c.kind for c in checks.entries] == ["trend", "differs"]
    assert checks.entries[1].note == "diffusion damps sin(kx) at rate k^2"
    assert checks.entries[1].claim == "the error at eta = 0.1" and checks.entries[1].paper == "3"
    assert checks.entries[1].oracle == "paper trend" and not checks.entries[1].gates
    assert checks.failures == [] and len(checks.differences) == 1
    with pytest.raises(KeyError, match="not declared"):
        checks.may_differ("invented after the run", False, book="x")
    with pytest.raises(ValueError, match="not declared 'may_differ: true'"):
        checks.may_differ("ratio", False, book="x")
    checks.assert_all()  # a registered difference alone does not fail
    assert "1 differ" in checks.report().data
    checks.true("a real trend", False, paper="up", book="down", oracle="paper trend")
    with pytest.raises(CheckFailed, match="a real trend"):
        checks.assert_all()


def test_measured_and_not_checked_are_shown_but_never_reproduced(registry):
    checks = Checks()
    checks.printed("a printed value", 0.6549, "0.65")
    checks.measured("a step cost", 4.9, paper="7.6x", note="other hardware")
    checks.not_checked("the v4 table", why="the 2024 spectrum is missing")
    with pytest.raises(ValueError, match="needs the reason"):
        checks.not_checked("no reason", why="")
    assert checks.counts() == {"matched": 1, "reproduced": 0, "measured": 1, "differs": 0,
                               "not checked": 1}
    report = checks.report().data
    assert '<span id="check-2"></span>measured' in report and "not checked" in report
    assert "1 matched, 0 reproduced, 1 measured" in report
    checks.assert_all()
    saved = json.loads((registry / "checks-chapter.json").read_text())["checks"]
    assert [c["gates"] for c in saved] == [True, False, False]
    assert [c["passed"] for c in saved] == [True, None, None]


def test_an_empty_chapter_fails():
    with pytest.raises(CheckFailed, match="no checks were recorded"):
        Checks("chapter", registry={}).assert_all()


def test_statuses_of_saved_entries():
    assert status_of({"kind": "matched", "passed": True}) == "matched"
    assert status_of({"kind": "trend", "passed": True}) == "reproduced"
    assert status_of({"kind": "measured", "passed": None}) == "measured"
    with pytest.raises(ValueError, match="not a registered 'differs'"):
        status_of({"kind": "inequality", "passed": False, "claim": "c"})
    with pytest.raises(ValueError, match="unknown kind"):
        status_of({"kind": "hunch", "passed": True})
    assert count_statuses([{"kind": "differs", "passed": False}])["differs"] == 1


def test_printed_digits():
    checks = Checks("chapter", registry={})
    assert checks.printed("rounds to the printed value", 0.123449, "0.1234")
    assert not checks.printed("one unit off", 0.1236, "0.1234")
    assert checks.entries[0].oracle == "published"


@pytest.mark.parametrize("text, message", [
    ("chapter:\n  c:\n    claim: a\n    reason: b\n", "missing fields \\['source'\\]"),
    ("chapter:\n  c:\n    claim: a\n    reason: b\n    source: s\n    colour: red\n",
     "unknown fields \\['colour'\\]"),
    ("chapter:\n  c:\n    claim: a\n    reason: b\n    source: s\n    threshold: ten\n",
     "threshold='ten' must be a number"),
    ("chapter:\n  c:\n    claim: a\n    reason: b\n    source: s\n    oracle: vibes\n",
     "oracle='vibes'"),
])
def test_malformed_registry_entries_are_named(tmp_path, text, message):
    path = tmp_path / "criteria.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_registry(path)


def test_the_books_registry_is_well_formed():
    from pathlib import Path

    registry = load_registry(Path(__file__).resolve().parents[1] / "notebooks" / "criteria.yaml")
    notebooks = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")}
    assert set(registry) <= notebooks
