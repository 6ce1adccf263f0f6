"""E0: the exact scores. Reverse SDE on the grid and PF-ODE by characteristics, in 1-D and
2-D (POT W2 on samples), and the score profile (Lipschitz constant, E4's budgets)."""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ...control import (
    SinePerturbedScore,
)
from ...fp_grid import (
    Grid,
    ReverseODE,
    prior_log_prob,
    push_particles,
)
from ...sde import SDE
from .particles import ode_particles_with_density, particle_w2
from .setting import (
    Setup,
    _emd_coarsen,
    _int_at_least,
    errors,
    exact_score,
    ode_density,
    sde_density,
)


def forward_snapshots(setup: Setup, times) -> Array:
    """Exact forward marginals ``p_t`` at ``times`` on the grid, ``(len(times), N)``."""
    return jnp.stack([setup.exact(float(t)) for t in times])


def score_lipschitz(setup: Setup, times) -> np.ndarray:
    """``sup_x |d/dx grad log p_t(x)|`` on the grid at ``times`` (E0: the blow-up of a
    disconnected support like ``gap^2 / sigma_t^4``)."""
    return score_profile(setup.target.score_fn(setup.sde), setup.sde, times,
                         fine_points(setup.grid)).lipschitz


class ScoreProfile(NamedTuple):
    """Sup-norms over points, against forward time, of a score and of the two reverse fields
    built from it (arrays over the times)."""

    lipschitz: np.ndarray  # sup_x ||grad s(x, t)|| (E0)
    ode_expansion: np.ndarray  # sup_x of the PF-ODE velocity's expansion rate (E4's budget)
    sde_sup: np.ndarray  # sup_x |reverse-SDE drift| (E4's budget)


#: Times per call of the profile program: E0's and E4's time lists share one compilation.
PROFILE_BLOCK = 40


def score_profile(score, sde: SDE, times, points) -> ScoreProfile:
    """The score's Lipschitz constant (E0) and E4's budgets, from one compiled program.

    At forward time ``t`` (reverse time ``tau = T - t``): the PF-ODE velocity ``-f(t) x +
    g(t)^2 s / 2`` (digest: ``y + s``) and the reverse-SDE drift ``-f(t) x + g(t)^2 s`` (``y + 2s``),
    as :class:`odesde.fp_grid.ReverseODE` and :class:`odesde.fp_grid.ReverseSDE`. Same values as
    :func:`odesde.control.field_profile` of each field; one program serves E0 and every gap of E4
    (times go in blocks of :data:`PROFILE_BLOCK`, the last padded).

    Args:
        score: ``score(x: (d,), t) -> (d,)`` in forward time.
        sde: the forward SDE.
        times: ``(m,)`` forward times.
        points: ``(n, d)`` points over which the sup is taken.

    Returns:
        A :class:`ScoreProfile` of ``(m,)`` arrays.
    """
    times = np.atleast_1d(np.asarray(times, dtype=float))
    m = times.shape[0]
    padded = np.concatenate([times, np.full((-m) % PROFILE_BLOCK, times[-1])])
    points = jnp.asarray(points, dtype=float)
    blocks = [_score_profile(score, sde, jnp.asarray(b), points)
              for b in padded.reshape(-1, PROFILE_BLOCK)]
    return ScoreProfile(*(np.concatenate([np.asarray(b[i]) for b in blocks])[:m] for i in range(3)))


@eqx.filter_jit
def _score_profile(score, sde, times, points):
    eye = jnp.eye(points.shape[-1], dtype=points.dtype)

    def at(t):
        s = jax.vmap(score, (0, None))(points, t)
        jac = jax.vmap(jax.jacfwd(score), (0, None))(points, t)
        f, g2 = sde.drift_coef(t), sde.diffusion(t) ** 2
        ode_jac = -f * eye + 0.5 * g2 * jac
        sym = 0.5 * (ode_jac + jnp.swapaxes(ode_jac, -1, -2))
        drift = -f * points + g2 * s
        return (
            jnp.max(jnp.linalg.norm(jac, ord=2, axis=(-2, -1))),
            jnp.max(jnp.linalg.eigvalsh(sym)[..., -1]),
            jnp.max(jnp.linalg.norm(drift, axis=-1)),
        )

    return jax.lax.map(at, times)


def fine_points(grid: Grid, num: int = 8001) -> Array:
    """``num`` (odd: 0 included) equispaced points of ``[-L, L]`` as ``(num, 1)``: the sup of a
    field's slope is taken there, since the score's steepest point (the middle of the gap, over a
    width ``sigma_t^2 / gap``) falls between the cell centres of a coarse grid."""
    return jnp.linspace(-grid.half_width, grid.half_width, num)[:, None]


def e0_sanity(setup: Setup, *, num_steps: int, num_snapshots: int, num_particles: int,
              particle_steps: int = 500, rtol: float = 1e-6, atol: float = 1e-6) -> dict:
    """Exact score: the reverse SDE (grid) and the PF-ODE (characteristics) against ``p_{t_0}``.

    Returns:
        A dict: ``taus`` and forward ``times`` of the snapshots, ``sde``, ``ode``, ``exact``
        snapshots ``(J + 1, N)``, terminal :class:`Errors` ``sde_errors``, ``ode_errors`` (the
        ODE's W2 from particles), the floors ``prior_mismatch`` (relative L2 of ``p_T`` against
        ``N(0, 1)``) and ``sde_mass_drift`` (max relative mass change over the snapshots), and
        ``sde_min`` (smallest density value).
    """
    num_steps = _int_at_least("e0_sanity: num_steps", num_steps, 1)
    num_snapshots = _int_at_least("e0_sanity: num_snapshots", num_snapshots, 1)
    if num_steps % num_snapshots:
        raise ValueError(f"e0_sanity: num_snapshots={num_snapshots} must divide num_steps={num_steps}")
    # The exact score as the eta = 0 member of E1's family (its perturbation is exactly zero):
    # the same pytree structure, so E0, E1 and E4 share their compiled solvers.
    score = SinePerturbedScore(setup.target, setup.sde, eta=0.0, frequency=1.0)
    every = num_steps // num_snapshots
    sde = sde_density(setup, score, num_steps, save_every=every)
    taus = setup.taus(num_steps)[::every]
    times = setup.sde.T - taus
    velocity = ReverseODE(setup.sde, score)
    ode = jnp.stack([setup.start()] + [ode_density(setup, velocity, float(tau), rtol=rtol, atol=atol)
                                       for tau in taus[1:]])
    exact = forward_snapshots(setup, times)
    grid = setup.grid
    x, _ = ode_particles_with_density(setup, velocity, num_particles, particle_steps)
    prior = grid.density(prior_log_prob(setup.sde))
    masses = np.asarray(jax.vmap(grid.mass)(sde))
    return dict(
        taus=np.asarray(taus), times=np.asarray(times), sde=np.asarray(sde), ode=np.asarray(ode),
        exact=np.asarray(exact),
        sde_errors=errors(grid, sde[-1], exact[-1]),
        ode_errors=errors(grid, ode[-1], exact[-1], w2=particle_w2(setup, x, setup.t_min)),
        prior_mismatch=float(grid.l2(setup.exact(setup.sde.T), prior) / grid.l2(prior, 0 * prior)),
        sde_mass_drift=float(np.max(np.abs(masses / masses[0] - 1.0))),
        sde_min=float(np.min(sde)),
    )


# --------------------------------------------------------------------------------------------
# E0 in 2-D


def grid_samples(grid: Grid, rho: Array, num: int, *, key: PRNGKeyArray) -> np.ndarray:
    """``num`` samples of a grid density read as piecewise constant: a cell drawn with
    probability ``rho_i dx^d / mass``, then a uniform point inside it. ``(num, d)``."""
    kc, ku = jax.random.split(key)
    p = jnp.ravel(jnp.asarray(rho))
    cells = jax.random.choice(kc, p.shape[0], (num,), p=p / jnp.sum(p))
    centres = grid.points().reshape(-1, grid.dim)[cells]
    jitter = jax.random.uniform(ku, (num, grid.dim), dtype=float, minval=-0.5, maxval=0.5)
    return np.asarray(centres + grid.dx * jitter)


def emd_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact ``W2`` between two equal-weight point clouds, POT ``ot.emd2`` on the squared
    Euclidean cost, outside ``jit`` (digest Sec. 3: 2-4k samples per side in 2-D)."""
    import ot

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    return math.sqrt(max(float(ot.emd2(a, b, ot.dist(x, y), numItermax=10_000_000)), 0.0))


def e0_sanity_2d(setup: Setup, *, num_steps: int, num_snapshots: int, num_samples: int,
                 key: PRNGKeyArray, particle_steps: int = 500, rtol: float = 1e-6,
                 atol: float = 1e-6, n_seeds: int = 1) -> dict:
    """E0 in 2-D: the exact score of a 2-D target, reverse SDE on the grid (dimension-split
    implicit SG steps) and PF-ODE by characteristics with the log-Jacobian, against ``p_{t_0}``.

    Besides the grid errors (relative L2, TV): ``W2`` from POT ``emd2`` on ``num_samples``
    samples per side (digest Sec. 3), SDE samples drawn from the grid density, ODE samples pushed
    from exact ``p_T`` samples with RK4 on ``particle_steps`` log-spaced steps, against exact
    ``p_{t_0}`` samples; the sampling floor is the W2 between two independent exact sample sets.
    The samples are drawn anew for each of ``n_seeds`` seeds (keys ``jax.random.fold_in(key,
    i)``): the W2 values are the means over the seeds.

    Returns:
        A dict: ``taus``, ``times``, snapshots ``sde``, ``ode``, ``exact`` ``(J + 1, N, N)``;
        ``sde_errors``, ``ode_errors`` (:class:`Errors`, W2: seed mean on samples), ``w2_floor``
        (seed mean), ``w2_seeds`` ``(n_seeds, 3)`` (SDE, ODE, floor) and their ``w2_sd``,
        ``sde_mass_drift``, ``sde_min``, ``num_samples``.
    """
    if setup.grid.dim != 2:
        raise ValueError(f"e0_sanity_2d: needs a 2-D setup, got dim={setup.grid.dim}")
    num_steps = _int_at_least("e0_sanity_2d: num_steps", num_steps, 1)
    num_snapshots = _int_at_least("e0_sanity_2d: num_snapshots", num_snapshots, 1)
    num_samples = _int_at_least("e0_sanity_2d: num_samples", num_samples, 2)
    n_seeds = _int_at_least("e0_sanity_2d: n_seeds", n_seeds, 1)
    if num_steps % num_snapshots:
        raise ValueError(f"e0_sanity_2d: num_snapshots={num_snapshots} must divide num_steps={num_steps}")
    grid, sde, target = setup.grid, setup.sde, setup.target
    score = exact_score(target, sde)
    every = num_steps // num_snapshots
    sde_rho = sde_density(setup, score, num_steps, save_every=every)
    taus = setup.taus(num_steps)[::every]
    times = sde.T - taus
    velocity = ReverseODE(sde, score)
    ode_rho = jnp.stack([setup.start()] + [ode_density(setup, velocity, float(tau), rtol=rtol, atol=atol)
                                           for tau in taus[1:]])
    exact = jnp.stack([setup.exact(float(t)) for t in times])
    w2s = []  # per seed: SDE, ODE, floor
    for seed in range(n_seeds):
        k_sde, k_ode, k_ex, k_ex2 = jax.random.split(jax.random.fold_in(key, seed), 4)
        x_exact = np.asarray(target.marginal(sde, setup.t_min).sample(num_samples, key=k_ex))
        x_floor = np.asarray(target.marginal(sde, setup.t_min).sample(num_samples, key=k_ex2))
        x_sde = grid_samples(grid, sde_rho[-1], num_samples, key=k_sde)
        x_start = target.marginal(sde, sde.T).sample(num_samples, key=k_ode)
        x_ode = np.asarray(push_particles(velocity, x_start, setup.taus(particle_steps)))
        w2s.append([emd_w2(x_sde, x_exact), emd_w2(x_ode, x_exact), emd_w2(x_floor, x_exact)])
    w2s = np.asarray(w2s)
    w2_mean = w2s.mean(0)
    w2_sd = w2s.std(0, ddof=1) if n_seeds > 1 else np.zeros(3)
    masses = np.asarray(jax.vmap(grid.mass)(sde_rho))
    return dict(
        taus=np.asarray(taus), times=np.asarray(times), sde=np.asarray(sde_rho),
        ode=np.asarray(ode_rho), exact=np.asarray(exact),
        sde_errors=errors(grid, sde_rho[-1], exact[-1], w2=w2_mean[0]),
        ode_errors=errors(grid, ode_rho[-1], exact[-1], w2=w2_mean[1]),
        w2_floor=float(w2_mean[2]), w2_seeds=w2s, w2_sd=w2_sd,
        sde_mass_drift=float(np.max(np.abs(masses / masses[0] - 1.0))),
        sde_min=float(np.min(np.asarray(sde_rho))), num_samples=num_samples,
    )


def w2_grid_against_pot_2d(setup: Setup, t_a: float, t_b: float, *, num_samples: int,
                           key: PRNGKeyArray) -> dict:
    """The 2-D grid W2 (:meth:`odesde.fp_grid.Grid.w2`: POT ``emd2`` on the cell masses, blocks
    of cells as needed) between the exact marginals ``p_{t_a}`` and ``p_{t_b}``, against POT
    ``emd2`` between ``num_samples`` exact samples of each; ``floor`` is the samples' W2 between
    two independent sets of ``p_{t_b}`` (the sampling noise)."""
    grid, sde, target = setup.grid, setup.sde, setup.target
    coarsen = _emd_coarsen(grid)
    ka, kb, kc = jax.random.split(key, 3)
    xa = np.asarray(target.marginal(sde, t_a).sample(num_samples, key=ka))
    xb = np.asarray(target.marginal(sde, t_b).sample(num_samples, key=kb))
    xc = np.asarray(target.marginal(sde, t_b).sample(num_samples, key=kc))
    return dict(grid=float(grid.w2(setup.exact(t_a), setup.exact(t_b), coarsen=coarsen)),
                pot=emd_w2(xa, xb), floor=emd_w2(xb, xc), coarsen=coarsen,
                num_samples=int(num_samples))
