"""A chapter's checks: the paper's claims as assertions, each with its oracle, recorded for the book.

Every chapter ends with a :class:`Checks`. Each entry states a claim, the target it is compared
with, the book's value, the tolerance, and its **oracle**: where the target comes from
(:data:`ORACLES`). ``report()`` shows the entries as a table; ``assert_all()`` saves them next
to the figures (``checks-NOTEBOOK.json``, from which the book's results overview is generated)
and fails the run if a gating entry does not hold, listing every failure.

Kinds of entry (:data:`KINDS`):

- gating, they fail the run when they do not hold: ``matched`` (a published number to its
  printed digits), ``agreement`` (a value within a tolerance of a target), ``inequality``,
  ``trend`` (a direction or an ordering);
- ``differs``: a criterion the registry (:data:`REGISTRY`) declares as possibly out of reach,
  recorded by :meth:`Checks.may_differ` when it does not hold, with the registry's reason;
- ``measured``: a value reported without a claim (:meth:`Checks.measured`): shown, never counted
  as reproduced;
- ``not checked``: a check that this profile or missing data leaves out
  (:meth:`Checks.not_checked`), with the reason.

Criteria that may legitimately not hold, and every threshold the book sets itself (oracle
``book criterion``), are declared before the run in the registry ``notebooks/criteria.yaml``:
claim, threshold, reason and where the criterion comes from. :meth:`Checks.may_differ` refuses
a criterion the registry does not declare, and a ``book criterion`` check names its entry.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import yaml

from ..utils import files, provenance
from ..utils.printed import half_unit, matches_printed
from . import figures

GATING_KINDS = ("matched", "agreement", "inequality", "trend")
"""Kinds of entry that fail the run when they do not hold."""
KINDS = GATING_KINDS + ("differs", "measured", "not checked")
ORACLES = ("published", "closed form", "independent implementation", "Monte-Carlo",
           "paper trend", "book criterion")
"""Where a check's target comes from: a printed number of the paper; a closed form; an
independent implementation (POT, a NumPy reference, another solver or sampler); a Monte-Carlo
estimate; a direction or ordering the paper claims; a threshold the book sets (registered)."""
REGISTRY = Path("notebooks") / "criteria.yaml"
"""The registry of criteria, relative to the book's root (``$ODESDE_CRITERIA`` overrides)."""
_CRITERION_FIELDS = {"claim", "reason", "source", "threshold", "may_differ", "oracle"}


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A registry entry: a criterion the book declares before the run."""

    notebook: str
    id: str
    claim: str
    reason: str
    source: str
    threshold: float | None = None
    may_differ: bool = False
    oracle: str = "book criterion"


@dataclasses.dataclass(frozen=True)
class Check:
    claim: str
    paper: str  # the target: a published value, an inequality, a trend, a registered threshold
    book: str  # what this run computed
    tolerance: str
    passed: bool | None  # None for "measured" and "not checked"
    kind: str  # one of KINDS
    oracle: str  # one of ORACLES ("" for "measured" and "not checked")
    note: str = ""  # the reason of a "differs", "not checked" or "book criterion" entry
    criterion: str = ""  # the registry id, if any

    @property
    def gates(self) -> bool:
        """Whether the entry fails the run when it does not hold."""
        return self.kind in GATING_KINDS


class CheckFailed(AssertionError):
    """One or more of a notebook's checks did not hold."""


def registry_path() -> Path:
    """``$ODESDE_CRITERIA``, else ``notebooks/criteria.yaml`` of the book."""
    if os.environ.get("ODESDE_CRITERIA"):
        return Path(os.environ["ODESDE_CRITERIA"])
    root = provenance.find_root()
    return (root if root else Path.cwd()) / REGISTRY


def load_registry(path: Path | None = None) -> dict[str, dict[str, Criterion]]:
    """The registry, ``{notebook: {id: Criterion}}``; a malformed entry raises, naming it."""
    path = Path(path) if path is not None else registry_path()
    if not path.is_file():
        raise FileNotFoundError(f"the criteria registry {path} is missing (set ODESDE_CRITERIA "
                                f"or run from the book's root)")
    raw = yaml.safe_load(path.read_text()) or {}
    out: dict[str, dict[str, Criterion]] = {}
    for notebook, entries in raw.items():
        out[notebook] = {}
        for cid, entry in (entries or {}).items():
            where = f"{path}: {notebook}/{cid}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: an entry is a mapping of {sorted(_CRITERION_FIELDS)}")
            unknown = set(entry) - _CRITERION_FIELDS
            missing = {"claim", "reason", "source"} - set(entry)
            if unknown or missing:
                raise ValueError(f"{where}: unknown fields {sorted(unknown)}, missing fields "
                                 f"{sorted(missing)}; allowed: {sorted(_CRITERION_FIELDS)}")
            oracle = entry.get("oracle", "book criterion")
            if oracle not in ORACLES:
                raise ValueError(f"{where}: oracle={oracle!r}: allowed are {ORACLES}")
            threshold = entry.get("threshold")
            if threshold is not None and (isinstance(threshold, bool)
                                          or not isinstance(threshold, (int, float))):
                raise ValueError(f"{where}: threshold={threshold!r} must be a number")
            out[notebook][cid] = Criterion(
                notebook, cid, str(entry["claim"]), str(entry["reason"]), str(entry["source"]),
                None if threshold is None else float(threshold),
                bool(entry.get("may_differ", False)), oracle)
    return out


class Checks:
    """Collects a notebook's checks (see the module docstring).

    Args:
        notebook: whose registry entries apply; default: the notebook the runner executes.
        registry: ``{notebook: {id: Criterion}}``; default: :func:`load_registry`, read when
            first needed.
    """

    def __init__(self, notebook: str | None = None, *,
                 registry: dict[str, dict[str, Criterion]] | None = None) -> None:
        self.notebook = notebook or figures.run_context()["notebook"]
        self._registry = registry
        self.entries: list[Check] = []

    # --- the registry --------------------------------------------------------------------

    def criterion(self, cid: str) -> Criterion:
        """The registry entry ``cid`` of this notebook; an undeclared one raises ``KeyError``."""
        if self._registry is None:
            self._registry = load_registry()
        declared = self._registry.get(self.notebook, {})
        if cid not in declared:
            raise KeyError(f"criterion {cid!r} is not declared for notebook {self.notebook!r} in "
                           f"{registry_path()}: declare it there (claim, threshold, reason, "
                           f"source) before the run; declared: {sorted(declared) or 'none'}")
        return declared[cid]

    def threshold(self, cid: str) -> float:
        """The registered threshold of criterion ``cid``."""
        value = self.criterion(cid).threshold
        if value is None:
            raise KeyError(f"criterion {cid!r} of {self.notebook!r} has no threshold in the "
                           f"registry")
        return value

    # --- gating entries ------------------------------------------------------------------

    def add(self, claim: str, passed: bool, *, paper: str, book: str, oracle: str,
            tolerance: str = "", kind: str = "agreement", criterion: str = "") -> bool:
        """Records a gating check; returns whether it passed.

        ``oracle="book criterion"`` needs ``criterion``, the registry id of the threshold
        (its reason is recorded with the entry).
        """
        if kind not in GATING_KINDS:
            raise ValueError(f"kind={kind!r}: a check is one of {GATING_KINDS}; use may_differ, "
                             f"measured or not_checked for the others")
        if oracle not in ORACLES:
            raise ValueError(f"oracle={oracle!r} for {claim!r}: allowed are {ORACLES}")
        if kind == "matched" and oracle != "published":
            raise ValueError(f"kind='matched' compares with a printed number: oracle must be "
                             f"'published', got {oracle!r} for {claim!r}")
        note = ""
        if oracle == "book criterion" and not criterion:
            raise ValueError(f"{claim!r}: a 'book criterion' check names its registry entry "
                             f"(criterion=...)")
        if criterion:
            note = self.criterion(criterion).reason
        self.entries.append(Check(claim, paper, book, tolerance, bool(passed), kind, oracle,
                                  note, criterion))
        return bool(passed)

    def printed(self, claim: str, value: float, printed: str) -> bool:
        """``value`` matches a published number to its printed digits."""
        tolerance = "exact (inf)" if printed == "-" else (
            "exact zero" if printed == "0" else f"±{half_unit(printed):.1g} (half a unit)")
        return self.add(claim, matches_printed(value, printed), paper=printed,
                        book=_fmt(value), tolerance=tolerance, kind="matched", oracle="published")

    def close(self, claim: str, value: float, target: float, *, oracle: str, rtol: float = 0.0,
              atol: float = 0.0, paper: str | None = None, criterion: str = "") -> bool:
        """``|value - target| <= atol + rtol |target|``."""
        passed = math.isfinite(value) and abs(value - target) <= atol + rtol * abs(target)
        tol = " + ".join(t for t in (f"{atol:.2g}" if atol else "",
                                     f"{rtol:.2g} rel" if rtol else "") if t)
        return self.add(claim, passed, paper=paper or _fmt(target), book=_fmt(value),
                        tolerance=tol or "exact", kind="agreement", oracle=oracle,
                        criterion=criterion)

    def less(self, claim: str, value: float, bound: float, *, oracle: str, paper: str = "",
             kind: str = "inequality", criterion: str = "") -> bool:
        """``value <= bound``."""
        return self.add(claim, value <= bound, paper=paper or f"≤ {_fmt(bound)}",
                        book=_fmt(value), kind=kind, oracle=oracle, criterion=criterion)

    def true(self, claim: str, passed: bool, *, paper: str, book: str, oracle: str,
             kind: str = "trend", criterion: str = "") -> bool:
        """A claim judged by the caller (a trend, a set of inequalities)."""
        return self.add(claim, passed, paper=paper, book=book, kind=kind, oracle=oracle,
                        criterion=criterion)

    # --- entries that never gate ---------------------------------------------------------

    def may_differ(self, cid: str, holds: bool, *, book: str, paper: str | None = None,
                   claim: str | None = None) -> bool:
        """A registered criterion: a trend when it holds, *differs* (with the registry's reason)
        when it does not; never fails the run.

        Args:
            cid: the registry id; it must be declared with ``may_differ: true``.
            holds: whether the criterion holds in this run.
            book: the book's value.
            paper: the target; default: the registered threshold.
            claim: the claim as shown (e.g. with the parameter it was evaluated at); default:
                the registered claim.
        """
        entry = self.criterion(cid)
        if not entry.may_differ:
            raise ValueError(f"criterion {cid!r} of {self.notebook!r} is not declared "
                             f"'may_differ: true' in the registry: it must hold (use a check)")
        holds = bool(holds)
        target = paper if paper is not None else (
            "" if entry.threshold is None else f"{entry.threshold:g}")
        self.entries.append(Check(claim or entry.claim, target, book, "", holds,
                                  "trend" if holds else "differs", entry.oracle, entry.reason,
                                  cid))
        return holds

    def measured(self, claim: str, value: Any, *, paper: str = "", note: str = "") -> None:
        """A value reported without a claim: shown, never counted as reproduced.

        ``paper``: the paper's value for comparison when it is not like for like (with ``note``
        saying why it is not a check).
        """
        self.entries.append(Check(claim, paper, _fmt(value), "", None, "measured", "", note))

    def not_checked(self, claim: str, *, why: str, paper: str = "") -> None:
        """A check that this run leaves out (the profile, missing data), with the reason."""
        if not why:
            raise ValueError(f"not_checked({claim!r}) needs the reason (why=...)")
        self.entries.append(Check(claim, paper, "", "", None, "not checked", "", why))

    # --- results ----------------------------------------------------------------------

    @property
    def failures(self) -> list[Check]:
        """Gating entries that do not hold: they fail the run."""
        return [c for c in self.entries if c.gates and not c.passed]

    @property
    def differences(self) -> list[Check]:
        """Registered criteria that did not hold."""
        return [c for c in self.entries if c.kind == "differs"]

    def counts(self) -> dict[str, int]:
        """Entries per status (:func:`status_of`)."""
        return count_statuses(dataclasses.asdict(c) for c in self.entries)

    def report(self):
        """The checks as a Markdown table (displayed by Jupyter and the book); each row has the
        anchor ``check-N`` that the results overview links to."""
        from IPython.display import Markdown

        rows = ["| | claim | oracle | paper | book | tolerance |", "|---|---|---|---|---|---|"]
        for i, c in enumerate(self.entries, 1):
            mark = {"differs": "⚠️ differs", "measured": "measured",
                    "not checked": "not checked"}.get(c.kind, "✅" if c.passed else "❌")
            book = f"{c.book} ({c.note})" if c.note and c.kind != "not checked" else c.book
            if c.kind == "not checked":
                book = f"— ({c.note})"
            rows.append(f'| <span id="check-{i}"></span>{mark} | {_cell(c.claim)} | '
                        f"{_cell(c.oracle)} | {_cell(c.paper)} | {_cell(book)} | "
                        f"{_cell(c.tolerance)} |")
        counts = self.counts()
        rows.append("\n" + summary_sentence(counts))
        return Markdown("\n".join(rows))

    def save(self) -> None:
        """Writes the checks to ``checks-NOTEBOOK.json`` beside the figures."""
        context = figures.run_context()
        path = figures.figures_dir() / f"checks-{context['notebook']}.json"
        files.write_json_atomic(path, {
            **context,
            "checks": [{**dataclasses.asdict(c), "gates": c.gates} for c in self.entries],
        })

    def assert_all(self) -> None:
        """Saves the checks, then raises :class:`CheckFailed` listing every gating check that
        does not hold (or if nothing was recorded)."""
        self.save()
        if not self.entries:
            raise CheckFailed("no checks were recorded: a chapter ends with its checks")
        if self.failures:
            lines = [f"{len(self.failures)} of {len(self.entries)} checks failed:"]
            lines += [f"- {c.claim}: paper {c.paper}, book {c.book} ({c.tolerance})"
                      for c in self.failures]
            raise CheckFailed("\n".join(lines))


STATUSES = ("matched", "reproduced", "measured", "differs", "not checked")
"""The statuses of the results overview: ``matched`` (printed digits), ``reproduced`` (an
agreement, inequality or trend that holds), and the three kinds that do not gate."""


def status_of(entry: dict) -> str:
    """The overview status of a saved entry; a failed gating entry raises ``ValueError``."""
    kind = entry["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} in a saved check: {entry.get('claim')!r}")
    if kind in GATING_KINDS:
        if not entry["passed"]:
            raise ValueError(f"a failed check that is not a registered 'differs': "
                             f"{entry.get('claim')!r} (paper {entry.get('paper')}, book "
                             f"{entry.get('book')})")
        return "matched" if kind == "matched" else "reproduced"
    return kind


def count_statuses(entries) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for entry in entries:
        try:
            counts[status_of(entry)] += 1
        except ValueError:
            continue  # a failure: reported by assert_all, not counted
    return counts


def summary_sentence(counts: dict[str, int]) -> str:
    return (f"{counts['matched']} matched, {counts['reproduced']} reproduced, "
            f"{counts['measured']} measured, {counts['differs']} differ (explained in the "
            f"text), {counts['not checked']} not checked.")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.6g}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
