"""E4: the disconnected-support budgets of the exact fields (descriptive)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm  # text bars: no widget state in executed notebooks

from ...control import (
    SinePerturbedScore,
)
from ...fp_grid import (
    Grid,
    ReverseODE,
)
from ...sde import SDE
from .e0 import fine_points, score_profile
from .particles import ode_particles_with_density, particle_l2, particle_w2
from .setting import Setup, errors, make_target, ode_density, sde_density


def e4_tradeoff(gaps, *, sde: SDE, grid: Grid, t_min: float, num_steps: int, num_particles: int,
                eta: float, frequency: float, particle_steps: int = 500, num_times: int = 200,
                rtol: float = 1e-6, atol: float = 1e-6, progress: bool = True) -> list[dict]:
    """E4 (descriptive): two unit intervals ``gap`` apart.

    For each gap: the exact PF-ODE budget ``int sup_x dv/dx dtau`` (velocity ``y + s``) against
    the SDE's ``int sup_x |v| dtau`` (drift ``y + 2 s``), on the grid and ``num_times`` log-spaced
    forward times in ``[t_0, T]``; and, at a fixed score error (E1's perturbation at ``eta``,
    ``frequency``), the terminal errors of both samplers and the mass they leave in the gap
    (exact: ``p_{t_0}`` of the gap).

    Returns:
        One dict per gap: ``gap``, ``ode_budget``, ``sde_budget``, ``sde``, ``ode``
        (:class:`Errors`), ``gap_mass`` (exact, SDE, ODE).
    """
    gaps = [float(g) for g in gaps]
    if not gaps or any(not g > 0 for g in gaps):
        raise ValueError(f"e4_tradeoff: gaps must be a non-empty list of numbers > 0, got {gaps!r}")
    times = np.geomspace(t_min, float(sde.T), num_times)
    records = []
    for gap in tqdm(gaps, desc="E4 gaps", disable=not progress):
        setup = Setup(sde, make_target("two-intervals", gap=gap), grid, t_min)
        # One program for both budgets (and E0's Lipschitz profile): see score_profile.
        prof = score_profile(setup.target.score_fn(sde), sde, times, fine_points(grid))
        score = SinePerturbedScore(setup.target, sde, eta=eta, frequency=frequency)
        rho_sde = sde_density(setup, score, num_steps)
        velocity = ReverseODE(sde, score)
        rho_ode = ode_density(setup, velocity, rtol=rtol, atol=atol)
        x, log_rho = ode_particles_with_density(setup, velocity, num_particles, particle_steps)
        exact = setup.exact(t_min)
        inside = np.abs(np.asarray(grid.centres())) < 0.5 * gap
        gap_mass = [float(np.sum(np.asarray(r)[inside]) * grid.dx) for r in (exact, rho_sde, rho_ode)]
        records.append(dict(
            gap=gap,
            ode_budget=float(np.trapezoid(prof.ode_expansion, np.asarray(times))),
            sde_budget=float(np.trapezoid(prof.sde_sup, np.asarray(times))),
            sde=errors(grid, rho_sde, exact),
            ode=errors(grid, rho_ode, exact, w2=particle_w2(setup, x, t_min),
                       l2=particle_l2(setup, x, log_rho, t_min)),
            gap_mass=gap_mass,
        ))
    return records
