"""Checks of the grid solver and of the metrics the chapter relies on."""

from __future__ import annotations

import math

import jax
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ...fp_grid import (
    Grid,
)
from ...sde import SDE
from ...targets import GaussianMixture
from .setting import Setup, _positive_ints, sde_density


def solver_convergence(target: GaussianMixture, sde: SDE, sizes, *, t_min: float = 0.05,
                       half_width: float = 6.0, steps_per_cell: int = 2) -> dict:
    """The reverse SDE with the exact mixture score from the exact ``p_T`` against the exact
    ``p_{t_0}`` (the mixture's FP solution in closed form), on grids of ``sizes`` cells with
    ``steps_per_cell * N`` log-spaced steps (``dt ~ dx``: first order overall, the implicit
    Euler step dominating the second-order SG space error).

    Returns:
        ``sizes``, ``errors`` (L2), ``orders`` (``log2`` of successive ratios; sizes doubling),
        ``mass_drift`` (max relative mass change over all runs).
    """
    sizes = _positive_ints("solver_convergence: sizes", sizes, low=3)
    errs, drift = [], 0.0
    for n in sizes:
        setup = Setup(sde, target, Grid(n, half_width), t_min)
        rho = sde_density(setup, target.score_fn(sde), steps_per_cell * n, save_every=n)
        masses = np.asarray(jax.vmap(setup.grid.mass)(rho))
        drift = max(drift, float(np.max(np.abs(masses / masses[0] - 1.0))))
        errs.append(float(setup.grid.l2(rho[-1], setup.exact(t_min))))
    errs = np.asarray(errs)
    ratios = np.asarray(sizes[1:], float) / np.asarray(sizes[:-1], float)
    return dict(sizes=np.asarray(sizes), errors=errs,
                orders=np.log(errs[:-1] / errs[1:]) / np.log(ratios), mass_drift=drift)


def w2_against_pot(grid: Grid, p: Array, q: Array, *, num_samples: int, key: PRNGKeyArray) -> dict:
    """The exact quantile W2 of two 1-D grid densities against POT's ``wasserstein_1d`` between
    ``num_samples`` independent inverse-CDF samples of each."""
    import ot

    ku, kv = jax.random.split(key)
    x = np.asarray(grid.quantile(p, jax.random.uniform(ku, (num_samples,), dtype=float)))
    y = np.asarray(grid.quantile(q, jax.random.uniform(kv, (num_samples,), dtype=float)))
    return dict(exact=float(grid.w2(p, q)), pot=math.sqrt(float(ot.wasserstein_1d(x, y, p=2))),
                num_samples=int(num_samples))


def spearman(x, y) -> float:
    """Spearman's rank correlation of two 1-D sequences (no ties expected)."""
    rx = np.argsort(np.argsort(np.asarray(x, float)))
    ry = np.argsort(np.argsort(np.asarray(y, float)))
    if rx.size < 2:
        raise ValueError(f"spearman: need at least 2 points, got {rx.size}")
    return float(np.corrcoef(rx, ry)[0, 1])
