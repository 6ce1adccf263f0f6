"""A notebook's checks: the paper's claims as assertions, recorded for the book.

Every chapter ends with a :class:`Checks` whose entries state a claim, the paper's value or
the inequality that must hold, the book's value and the tolerance. ``report()`` shows them as
a table; ``assert_all()`` fails the run if any does not hold, listing every failure; and
``save()`` writes them next to the figures (``checks-NOTEBOOK.json``), from which the book's
results overview is generated.

One kind of entry does not fail the run: :meth:`Checks.may_differ`, for a criterion that the
book states in advance it may not reproduce (a reconstructed threshold, a paper's claim that the
budget cannot show). It is recorded either way, as a reproduced trend or as *differs*, and the
chapter explains a difference where it shows it. The entries that gate the run must stay
real checks; ``may_differ`` never replaces them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..utils import files
from ..utils.printed import half_unit, matches_printed
from . import figures


@dataclasses.dataclass(frozen=True)
class Check:
    claim: str
    paper: str  # the published value, inequality or trend checked against
    book: str  # what this run computed
    tolerance: str
    passed: bool
    kind: str  # "matched", "inequality", "trend", "agreement"; "differs": see may_differ
    note: str = ""  # why a "differs" entry differs


class CheckFailed(AssertionError):
    """One or more of a notebook's checks did not hold."""


class Checks:
    """Collects a notebook's checks (see the module docstring)."""

    def __init__(self) -> None:
        self.entries: list[Check] = []

    def add(self, claim: str, passed: bool, *, paper: str, book: str, tolerance: str = "",
            kind: str = "agreement") -> bool:
        """Records a check; returns whether it passed."""
        self.entries.append(Check(claim, paper, book, tolerance, bool(passed), kind))
        return bool(passed)

    def printed(self, claim: str, value: float, printed: str) -> bool:
        """``value`` matches a published number to its printed digits."""
        tolerance = "exact (inf)" if printed == "-" else (
            "exact zero" if printed == "0" else f"±{half_unit(printed):.1g} (half a unit)")
        return self.add(claim, matches_printed(value, printed), paper=printed,
                        book=_fmt(value), tolerance=tolerance, kind="matched")

    def close(self, claim: str, value: float, target: float, *, rtol: float = 0.0,
              atol: float = 0.0, paper: str | None = None) -> bool:
        """``|value - target| <= atol + rtol |target|``."""
        passed = math.isfinite(value) and abs(value - target) <= atol + rtol * abs(target)
        tol = " + ".join(t for t in (f"{atol:.2g}" if atol else "", f"{rtol:.2g} rel" if rtol else "") if t)
        return self.add(claim, passed, paper=paper or _fmt(target), book=_fmt(value),
                        tolerance=tol or "exact", kind="agreement")

    def less(self, claim: str, value: float, bound: float, *, paper: str = "",
             kind: str = "inequality") -> bool:
        """``value <= bound``."""
        return self.add(claim, value <= bound, paper=paper or f"≤ {_fmt(bound)}",
                        book=_fmt(value), tolerance="", kind=kind)

    def true(self, claim: str, passed: bool, *, paper: str, book: str,
             kind: str = "trend") -> bool:
        """A claim judged by the caller (a trend, a set of inequalities)."""
        return self.add(claim, passed, paper=paper, book=book, kind=kind)

    def may_differ(self, claim: str, holds: bool, *, paper: str, book: str, why: str = "") -> bool:
        """A criterion recorded as a trend when it holds and as *differs* when it does not.

        For criteria the chapter names in advance as possibly out of reach (see the module
        docstring); a difference is shown in the report and the results overview, with ``why``,
        and does not fail the run.
        """
        holds = bool(holds)
        self.entries.append(Check(claim, paper, book, "", holds, "trend" if holds else "differs",
                                  "" if holds else why))
        return holds

    @property
    def failures(self) -> list[Check]:
        """Entries that fail the run: every check that does not hold, except *differs*."""
        return [c for c in self.entries if not c.passed and c.kind != "differs"]

    @property
    def differences(self) -> list[Check]:
        """Entries recorded by :meth:`may_differ` that did not hold."""
        return [c for c in self.entries if c.kind == "differs"]

    def report(self):
        """The checks as a Markdown table (displayed by Jupyter and the book)."""
        from IPython.display import Markdown

        rows = ["| | claim | paper | book | tolerance |", "|---|---|---|---|---|"]
        for c in self.entries:
            mark = "✅" if c.passed else ("⚠️ differs" if c.kind == "differs" else "❌")
            book = f"{c.book} ({c.note})" if c.note else c.book
            rows.append(f"| {mark} | {_cell(c.claim)} | {_cell(c.paper)} | {_cell(book)} | {_cell(c.tolerance)} |")
        held = sum(c.passed for c in self.entries)
        differ = f", {len(self.differences)} differ from the criterion (explained in the text)" \
            if self.differences else ""
        rows.append(f"\n{held} of {len(self.entries)} checks hold{differ}.")
        return Markdown("\n".join(rows))

    def save(self) -> None:
        """Writes the checks to ``checks-NOTEBOOK.json`` beside the figures."""
        context = figures.run_context()
        path = figures.figures_dir() / f"checks-{context['notebook']}.json"
        files.write_json_atomic(path, {
            **context, "checks": [dataclasses.asdict(c) for c in self.entries],
        })

    def assert_all(self) -> None:
        """Raises :class:`CheckFailed` listing every check that does not hold."""
        self.save()
        if self.failures:
            lines = [f"{len(self.failures)} of {len(self.entries)} checks failed:"]
            lines += [f"- {c.claim}: paper {c.paper}, book {c.book} ({c.tolerance})"
                      for c in self.failures]
            raise CheckFailed("\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.6g}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
