"""One plot style for the book, and saving a figure with its provenance.

``save(fig, "fig-...", data=...)`` writes PNG, PDF and SVG, records where the figure came from
in ``manifest.json`` beside them and in each file's own metadata, and glues the figure into
the notebook so that a ``{glue:figure}`` directive can number, caption and label it.

The runner (``odesde run``) tells a notebook where it runs through environment variables:
``ODESDE_NOTEBOOK``, ``ODESDE_PROFILE``, ``ODESDE_PARAMETERS`` (JSON), ``ODESDE_FIGURES_DIR``
and ``ODESDE_COMMIT``. A notebook opened by hand writes to ``_build/figures`` of the book.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt

from ..utils import provenance
from ..utils.files import atomic_path, write_json_atomic

#: Okabe & Ito's colour-blind safe palette (black last: it is kept for references).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Line styles paired with the palette, so curves stay apart in grey scale too.
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), "-")

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "image.cmap": "viridis",
    "lines.linewidth": 1.6,
    "svg.hashsalt": "odesde",  # stable SVG ids
    "pdf.fonttype": 42,
}

_NAME = re.compile(r"^fig-[a-z0-9][a-z0-9-]*$")


def use_style() -> None:
    """Applies the book's plot style to matplotlib."""
    mpl.rcParams.update(STYLE)


def figures_dir() -> Path:
    """Where figures go: ``$ODESDE_FIGURES_DIR``, else ``_build/figures`` of the book."""
    if os.environ.get("ODESDE_FIGURES_DIR"):
        return Path(os.environ["ODESDE_FIGURES_DIR"])
    root = provenance.find_root()
    return (root / "_build" if root else Path.cwd() / "_build") / "figures"


def run_context() -> dict[str, Any]:
    """The notebook, profile and parameters of the current run (set by the runner)."""
    return {
        "notebook": os.environ.get("ODESDE_NOTEBOOK", "interactive"),
        "profile": os.environ.get("ODESDE_PROFILE", "none"),
        "parameters": json.loads(os.environ.get("ODESDE_PARAMETERS", "{}")),
    }


def provenance_record(name: str, *, data: Any = None, caption: str = "") -> dict[str, Any]:
    """The record stored with a figure: who made it, from what, with which code."""
    return {
        "figure": name,
        **run_context(),
        "caption": caption,
        "git_commit": os.environ.get("ODESDE_COMMIT") or provenance.git_commit(),
        "packages": provenance.package_versions(),
        "data_sha256": provenance.data_sha256(data),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save(fig, name: str, *, data: Any = None, caption: str = "", glue: bool = True) -> dict:
    """Writes ``fig`` as ``name``.png/.pdf/.svg with its provenance, and glues it.

    Args:
        fig: a matplotlib figure.
        name: the figure's stable label, ``fig-`` followed by lower-case words and dashes;
            the same label names the figure in the book (``{numref}`name```).
        data: the arrays the figure shows (array, or dict / list of arrays); their sha256
            goes into the record, so a cited figure can be traced to its numbers.
        caption: a short description stored in the record (the book's caption is the
            ``{glue:figure}`` directive's text).
        glue: glue the figure into the executed notebook under ``name`` (MyST-NB).

    Returns:
        The provenance record.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"figure name {name!r}: must match {_NAME.pattern} (e.g. 'fig-w2-vs-residual')"
        )
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record = provenance_record(name, data=data, caption=caption)
    text = json.dumps(record, sort_keys=True)
    metadata = {
        "png": {"Title": name, "Description": caption, "odesde-provenance": text},
        "pdf": {"Title": name, "Subject": text, "CreationDate": None},
        "svg": {"Title": name, "Description": text, "Date": None},
    }
    for fmt, meta in metadata.items():
        with atomic_path(folder / f"{name}.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, metadata=meta)
    _update_manifest(folder / "manifest.json", name, record)
    if glue:
        from myst_nb import glue as myst_glue

        myst_glue(name, fig, display=False)
    plt.close(fig)
    return record


def _update_manifest(path: Path, name: str, record: dict) -> None:
    # Notebooks running in parallel may share a folder: serialise the read-modify-write.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest[name] = record
        write_json_atomic(path, manifest)


def read_manifest(folder: Path | None = None) -> dict[str, dict]:
    """The manifest of a figures folder (empty when there is none)."""
    path = Path(folder or figures_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (the book renders notebook Markdown output as MyST)."""

    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
