"""E1: the score perturbation ``c_k(t) sin(k x)`` of fixed ``L2(p_t)`` size, swept over
frequencies and sizes."""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm  # text bars: no widget state in executed notebooks

from ...control import (
    SinePerturbedScore,
)
from ...fp_grid import (
    ReverseODE,
)
from .e0 import forward_snapshots
from .particles import ode_particles_with_density, particle_l2, particle_w2
from .setting import Setup, _int_at_least, errors, ode_density, sde_density


def e1_sweep(setup: Setup, etas, frequencies, *, num_steps: int, num_snapshots: int,
             num_particles: int, particle_steps: int = 500, rtol: float = 1e-6,
             atol: float = 1e-6, progress: bool = True) -> dict:
    """E1: the exact score plus ``c_k(t) sin(k x)`` with ``||.||_{L2(p_t)} = eta`` at every ``t``,
    in both samplers (SDE drift ``y + 2 s``, ODE velocity ``y + s``).

    Returns:
        A dict of arrays over ``(eta, k)``: ``sde_l2``, ``sde_tv``, ``sde_w2``, ``ode_l2``
        (particles, :func:`particle_l2`), ``ode_l2_grid`` (cell centres), ``ode_tv`` (cell
        centres), ``ode_w2`` (particles), ``sde_sup_l2`` (max over the snapshots), and the
        curves ``sde_l2_tau`` ``(eta, k, J + 1)`` at reverse times ``taus``, the terminal densities
        ``sde_final``, ``ode_final`` ``(eta, k, N)`` and the exact ``exact_final``.
    """
    etas = [float(e) for e in etas]
    frequencies = [float(k) for k in frequencies]
    if not etas or any(not e > 0 for e in etas):
        raise ValueError(f"e1_sweep: etas must be a non-empty list of numbers > 0, got {etas!r}")
    if not frequencies or any(not k > 0 for k in frequencies):
        raise ValueError(f"e1_sweep: frequencies must be a non-empty list of numbers > 0, got {frequencies!r}")
    num_steps = _int_at_least("e1_sweep: num_steps", num_steps, 1)
    if num_steps % num_snapshots:
        raise ValueError(f"e1_sweep: num_snapshots={num_snapshots} must divide num_steps={num_steps}")
    every = num_steps // num_snapshots
    grid = setup.grid
    taus = setup.taus(num_steps)[::every]
    exact_tau = forward_snapshots(setup, setup.sde.T - taus)
    exact = exact_tau[-1]
    shape = (len(etas), len(frequencies))
    out = {name: np.zeros(shape) for name in
           ("sde_l2", "sde_tv", "sde_w2", "ode_l2", "ode_tv", "ode_w2", "sde_sup_l2")}
    out["ode_l2_grid"] = np.zeros(shape)
    out["sde_l2_tau"] = np.zeros((*shape, len(taus)))
    out["sde_final"] = np.zeros((*shape, grid.num_cells))
    out["ode_final"] = np.zeros((*shape, grid.num_cells))
    with tqdm(total=len(etas) * len(frequencies), desc="E1 sweep", disable=not progress) as bar:
        for i, eta in enumerate(etas):
            for j, k in enumerate(frequencies):
                score = SinePerturbedScore(setup.target, setup.sde, eta=eta, frequency=k)
                sde = sde_density(setup, score, num_steps, save_every=every)
                velocity = ReverseODE(setup.sde, score)
                ode = ode_density(setup, velocity, rtol=rtol, atol=atol)
                x, log_rho = ode_particles_with_density(setup, velocity, num_particles,
                                                        particle_steps)
                es = errors(grid, sde[-1], exact)
                eo = errors(grid, ode, exact, w2=particle_w2(setup, x, setup.t_min),
                            l2=particle_l2(setup, x, log_rho, setup.t_min))
                out["ode_l2_grid"][i, j] = float(grid.l2(ode, exact))
                curve = np.asarray(jax.vmap(grid.l2)(sde, exact_tau))
                for name, value in (("sde_l2", es.l2), ("sde_tv", es.tv), ("sde_w2", es.w2),
                                    ("ode_l2", eo.l2), ("ode_tv", eo.tv), ("ode_w2", eo.w2),
                                    ("sde_sup_l2", curve.max())):
                    out[name][i, j] = value
                out["sde_l2_tau"][i, j] = curve
                out["sde_final"][i, j] = np.asarray(sde[-1])
                out["ode_final"][i, j] = np.asarray(ode)
                bar.update(1)
    out.update(etas=np.asarray(etas), frequencies=np.asarray(frequencies), taus=np.asarray(taus),
               exact_final=np.asarray(exact))
    return out


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0])
