"""The Gaussian chapter's published targets (Pierret & Galerne, arXiv:2405.14250).

``notebooks/gaussian_exact_errors.ipynb`` computes everything with :mod:`odesde.gaussian` and
:mod:`odesde.spectra`; this study holds what it compares against, transcribed from the digest
``shared/papers/pierret_galerne.md``: the pre-ICML CIFAR-10 table and the float64 anchors,
matched to half a unit of their last printed digit (:mod:`odesde.utils.printed`). They are
targets for checks only, never results. :func:`published_file` finds the published data these
targets were computed from, and refuses to let the ``paper`` profile run without them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import spectra

# --- Pierret & Galerne (arXiv:2405.14250 v4), the pre-ICML CIFAR-10 table ---------------------
# 2024 spectrum, N = grid points, cells "p_T / N(0, I)"; the first column is the continuous
# solution (exact SDE for EM/EI, exact ODE for Euler/Heun). Digest Sec. 5.
_PIERRET_GALERNE_V4 = """
em    0     | 0 / 6.7E-4       | 4.77 / 4.77 | 0.65 / 0.65 | 0.31 / 0.31 | 0.15 / 0.16
em    1e-5  | 2.5E-3 / 2.6E-3  | 4.77 / 4.77 | 0.65 / 0.65 | 0.31 / 0.31 | 0.16 / 0.16
em    1e-3  | 0.17 / 0.17      | 4.67 / 4.67 | 0.69 / 0.69 | 0.39 / 0.39 | 0.27 / 0.27
em    1e-2  | 1.35 / 1.35      | 4.56 / 4.56 | 1.69 / 1.69 | 1.50 / 1.50 | 1.42 / 1.42
ei    0     | 0 / 6.7E-4       | 2.81 / 2.81 | 0.57 / 0.57 | 0.30 / 0.30 | 0.16 / 0.16
ei    1e-5  | 2.5E-3 / 2.6E-3  | 2.81 / 2.81 | 0.57 / 0.57 | 0.30 / 0.30 | 0.16 / 0.16
ei    1e-3  | 0.17 / 0.17      | 2.91 / 2.91 | 0.66 / 0.66 | 0.41 / 0.41 | 0.28 / 0.28
ei    1e-2  | 1.35 / 1.35      | 3.93 / 3.93 | 1.76 / 1.76 | 1.55 / 1.55 | 1.45 / 1.45
euler 0     | 0 / 0.07         | 1.72 / 1.78 | 0.38 / 0.44 | 0.19 / 0.26 | 0.10 / 0.17
euler 1e-5  | 2.5E-3 / 0.07    | 1.72 / 1.78 | 0.38 / 0.44 | 0.20 / 0.26 | 0.10 / 0.17
euler 1e-3  | 0.17 / 0.19      | 1.72 / 1.78 | 0.42 / 0.48 | 0.27 / 0.32 | 0.21 / 0.25
euler 1e-2  | 1.35 / 1.36      | 2.21 / 2.25 | 1.41 / 1.43 | 1.37 / 1.38 | 1.36 / 1.37
heun  0     | 0 / 0.07         | 7.09 / 7.09 | 0.72 / 0.73 | 0.21 / 0.22 | 0.05 / 0.09
heun  1e-5  | 2.5E-3 / 0.07    | 6.48 / 6.48 | 0.64 / 0.65 | 0.18 / 0.20 | 0.05 / 0.09
heun  1e-3  | 0.17 / 0.19      | 0.56 / 0.57 | 0.13 / 0.15 | 0.16 / 0.18 | 0.17 / 0.19
heun  1e-2  | 1.35 / 1.36      | 1.37 / 1.38 | 1.35 / 1.36 | 1.35 / 1.36 | 1.35 / 1.36
"""


@dataclasses.dataclass(frozen=True)
class PublishedTable:
    """A printed table of ``W2(output, p_0)``: ``cells[(scheme, eps)][column] = (p_T, N_0)``.

    Column 0 is the continuous solution, then one column per entry of ``n_points``. Cells are
    the printed strings (``"0"``, ``"6.7E-4"``, ``"0.65"``); a printed value is matched when
    the computed one rounds to it, i.e. within half a unit of its last printed digit.
    """

    source: str
    spectrum: str
    schemes: tuple[str, ...]
    eps: tuple[float, ...]
    n_points: tuple[int, ...]
    cells: dict

    def printed(self, scheme: str, eps: float, column: int, start: str) -> str:
        return self.cells[(scheme, eps)][column][("pT", "normal").index(start)]


def _parse(text: str) -> dict:
    cells = {}
    for line in text.strip().splitlines():
        head, *columns = (part.strip() for part in line.split("|"))
        scheme, eps = head.split()
        cells[(scheme, float(eps))] = [tuple(c.strip() for c in col.split("/")) for col in columns]
    return cells


PIERRET_GALERNE_V4 = PublishedTable(
    source="Pierret & Galerne, arXiv:2405.14250 v4, CIFAR-10 table (digest Sec. 5)",
    spectrum="cifar10-2024",
    schemes=("em", "ei", "euler", "heun"),
    eps=(0.0, 1e-5, 1e-3, 1e-2),
    n_points=(50, 250, 500, 1000),
    cells=_parse(_PIERRET_GALERNE_V4),
)

#: Float64 anchors of the digest (2024 spectrum, N(0, I) start, eps = 0, N = 1000 grid points);
#: each is matched to half a unit of its last printed digit.
PIERRET_GALERNE_ANCHORS = {
    "em": "0.155139",
    "ei": "0.155353",
    "euler": "0.165959",
    "heun": "0.0904636",
    "sde": "6.679e-4",
    "ode": "0.07296",
    "initialisation": "5.467e-3",
}


#: The digest's CIFAR-10 anchors of Figure 1a, stated for both spectra (N(0, I) start, eps = 0):
#: the initialisation error W2(N0, p_T), and W2 to p_0 after the exact SDE and the exact ODE.
#: Digest Sec. 2.
PIERRET_GALERNE_FIGURE_1A = {
    "initialisation": "5.47e-3",
    "sde": "6.7e-4",
    "ode": "0.0730",
}

#: The ADSN model of fabric.png (digest Sec. 4): the trace of its spectrum, the energy of the
#: periodic component of the centred image (Parseval), and the energy of the centred image
#: itself, "without the periodic component".
ADSN_FABRIC = {
    "trace": "1805.14",
    "trace_without_periodic_component": "1764.89",
}


def published_file(name: str, *, profile: str) -> Path | None:
    """The published file of spectrum ``name`` (:data:`odesde.spectra.PUBLISHED`), if present.

    The ``paper`` profile compares with the values published for these files, so there a
    missing file is an error; the other profiles run without it (the chapter records the checks
    it feeds as *not checked*).

    Args:
        name: a published spectrum, e.g. ``"cifar10-2024"``.
        profile: the run's profile (``figures.run_context()["profile"]``).

    Returns:
        The file in ``$ODESDE_DATA`` or the user cache; ``None`` if it is missing (outside the
        ``paper`` profile).

    Raises:
        FileNotFoundError: in the ``paper`` profile, when the file is missing; the message names
            the file, the folders searched and ``ODESDE_DATA``.
    """
    if name not in spectra.PUBLISHED:
        raise ValueError(f"name={name!r} is not a published spectrum: allowed are "
                         f"{tuple(spectra.PUBLISHED)}")
    filename = spectra.PUBLISHED[name][0]
    path = spectra.find(filename)
    if path is None and profile == "paper":
        searched = ", ".join(str(d) for d in spectra.search_dirs())
        raise FileNotFoundError(
            f"{filename} is missing (searched: {searched}): the paper profile compares with the "
            f"values published for this file and does not run without it. Set ODESDE_DATA to "
            f"the folder that holds {filename} (the book's reference data, e.g. "
            f"ODESDE_DATA=../shared/data), or run another profile, which lists the checks that "
            f"need it as not checked.")
    return path
