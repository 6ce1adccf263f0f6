"""The setting of the controllability experiments: the OU process, the targets with exact
marginals and scores, the grid, and the terminal errors of the reverse processes."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ...fp_grid import (
    Grid,
    ReverseSDE,
    ode_log_density,
    reverse_times,
    solve_fp,
)
from ...sde import SDE, VPSDE
from ...targets import GaussianMixture, TwoIntervals

#: The chapter's targets: the disconnected support (digest: ``[-2, -1] U [1, 2]``), a smooth
#: bimodal Gaussian mixture (E3's reference: exact, and reachable by smooth controls) and its 2-D
#: counterpart (the 2-D E0 and E3).
TARGETS = ("two-intervals", "mixture", "mixture-2d")


def ou_process(T: float = 3.0) -> VPSDE:
    """The digest's OU process ``dX = -X dt + sqrt(2) dW`` on ``[0, T]`` (Pierret's VP, beta = 1)."""
    if not T > 0:
        raise ValueError(f"ou_process: T must be > 0, got {T!r}")
    return VPSDE(beta_min=1.0, beta_max=1.0, T=float(T), convention="pierret")


def bimodal_mixture() -> GaussianMixture:
    """``0.4 N(-1.5, 0.15) + 0.6 N(1.2, 0.1)`` in 1-D."""
    return GaussianMixture(
        jnp.array([0.4, 0.6]), jnp.array([[-1.5], [1.2]]), jnp.array([[[0.15]], [[0.1]]])
    )


def bimodal_mixture_2d() -> GaussianMixture:
    """The 2-D target of the 2-D E0 and E3: ``0.4 N((-1.2, 0.6), C_1) + 0.6 N((1.2, -0.6), C_2)``
    with anisotropic, correlated covariances (a smooth target with an exact score, digest Sec. 3)."""
    return GaussianMixture(
        jnp.array([0.4, 0.6]),
        jnp.array([[-1.2, 0.6], [1.2, -0.6]]),
        jnp.array([[[0.2, 0.06], [0.06, 0.12]], [[0.12, -0.04], [-0.04, 0.18]]]),
    )


class MixtureScore(eqx.Module):
    """The exact noised score of a Gaussian mixture under a linear SDE, ``score(x: (d,), t)``.

    The same closed form as ``GaussianMixture.score_fn`` (``-sum_k r_k(x) C_k(t)^{-1} (x -
    alpha_t m_k)``, ``C_k(t) = alpha_t^2 C_k + sigma_t^2 I``), with the precisions and
    log-determinants computed from ``t`` alone, so that evaluating it at many points (the grid
    solver's faces, vmapped) costs matrix products instead of one triangular solve per point and
    component, which dominate the 2-D solver's time on CPU.
    """

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: Array, t) -> Array:
        mix, sde = self.mixture, self.sde
        alpha, var = sde.mean_scale(t), sde.noise_variance(t)
        covs = alpha**2 * mix.covs + var * jnp.eye(mix.dim, dtype=mix.covs.dtype)
        precisions = jnp.linalg.inv(covs)
        log_det = jnp.linalg.slogdet(covs)[1]
        diff = x - alpha * mix.means  # (K, d)
        pdiff = jnp.einsum("kij,kj->ki", precisions, diff)
        log_joint = jnp.log(mix.weights) - 0.5 * jnp.sum(diff * pdiff, -1) - 0.5 * log_det
        return -jax.nn.softmax(log_joint) @ pdiff


def exact_score(target, sde: SDE):
    """The target's exact score: :class:`MixtureScore` for a Gaussian mixture in 2-D (fast at
    many points), ``target.score_fn(sde)`` otherwise (the 1-D experiments keep the targets'
    own closed forms)."""
    if isinstance(target, GaussianMixture) and target.dim == 2:
        return MixtureScore(target, sde)
    return target.score_fn(sde)


def make_target(name: str, *, gap: float = 2.0):
    """A target by name: ``"two-intervals"`` (1-D, two unit intervals ``gap`` apart, centred),
    ``"mixture"`` (:func:`bimodal_mixture`) or ``"mixture-2d"`` (:func:`bimodal_mixture_2d`)."""
    if name == "mixture-2d":
        return bimodal_mixture_2d()
    if name == "two-intervals":
        if not gap > 0:
            raise ValueError(f"make_target: gap must be > 0, got {gap!r}")
        h = 0.5 * float(gap)
        return TwoIntervals((-h - 1.0, -h), (h, h + 1.0))
    if name == "mixture":
        return bimodal_mixture()
    raise ValueError(f"make_target: target must be one of {TARGETS}, got {name!r}")


def _int_at_least(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _positive_ints(name: str, values, *, low: int = 1) -> list[int]:
    values = list(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty list of ints >= {low}, got {values!r}")
    return [_int_at_least(f"{name} entry", v, low) for v in values]


# --------------------------------------------------------------------------------------------
# The setting


@dataclasses.dataclass(frozen=True)
class Setup:
    """The OU process, a target, the grid and the early-stopping time ``t_0``.

    Args:
        sde: the forward process (:func:`ou_process`).
        target: a target with exact ``marginal_log_prob`` and ``score_fn``, of dimension 1 or 2.
        grid: an :class:`odesde.fp_grid.Grid` of the target's dimension (the 1-D experiments
            E0-E4 and the 2-D ones, :func:`e0_sanity_2d` and :func:`e3_controls` with ``d = 2``).
        t_min: ``t_0`` (digest: ``[1e-3, 1e-2]``).
    """

    sde: SDE
    target: Any
    grid: Grid
    t_min: float

    def __post_init__(self):
        dim = getattr(self.target, "dim", None)
        if not isinstance(self.grid, Grid) or self.grid.dim != dim:
            raise ValueError(f"Setup: grid must be an odesde Grid of the target's dimension {dim}, "
                             f"got {self.grid!r}")
        if not 0 < self.t_min < self.sde.T:
            raise ValueError(f"Setup: t_min must lie in (0, T = {self.sde.T}), got {self.t_min!r}")

    @property
    def horizon(self) -> float:
        """The reverse time ``T - t_0`` at which the target ``p_{t_0}`` is reached."""
        return float(self.sde.T) - float(self.t_min)

    def log_prob(self, t: float) -> Callable:
        """``x -> log p_t(x)`` (batched), a pytree (``eqx.Partial``)."""
        return eqx.Partial(_marginal_log_prob, self.target, self.sde, jnp.asarray(t, dtype=float))

    def exact(self, t: float) -> Array:
        """``p_t`` at the cell centres (point values, not renormalised)."""
        return self.grid.density(self.log_prob(t))

    def start(self) -> Array:
        """The reverse processes' initial density: the exact ``p_T``, renormalised on the grid."""
        return self.grid.density(self.log_prob(self.sde.T), normalise=True)

    def taus(self, num_steps: int, spacing: str = "log") -> Array:
        return reverse_times(self.sde, self.t_min, num_steps, spacing=spacing)


def _marginal_log_prob(target, sde, t, x):
    return target.marginal_log_prob(x, t, sde=sde)


@dataclasses.dataclass(frozen=True)
class Errors:
    """A density against the exact one: L2, relative L2, total variation and W2."""

    l2: float
    rel_l2: float
    tv: float
    w2: float


def errors(grid: Grid, rho: Array, exact: Array, *, w2: float | None = None,
           l2: float | None = None) -> Errors:
    """:class:`Errors` of ``rho`` against ``exact`` on ``grid``; ``w2`` and ``l2`` override the
    grid values (the ODE's particle W2 and L2: :func:`particle_w2`, :func:`particle_l2`)."""
    l2 = float(grid.l2(rho, exact)) if l2 is None else float(l2)
    return Errors(
        l2=l2,
        rel_l2=l2 / float(grid.l2(exact, jnp.zeros_like(exact))),
        tv=float(grid.tv(rho, exact)),
        w2=float(grid.w2(rho, exact)) if w2 is None else float(w2),
    )


def sde_density(setup: Setup, score, num_steps: int, *, save_every: int | None = None) -> Array:
    """The reverse SDE's density (digest: drift ``y + 2 s``) from the exact ``p_T`` to ``t_0``."""
    return solve_fp(
        ReverseSDE(setup.sde, score), setup.start(), setup.taus(num_steps), grid=setup.grid,
        save_every=save_every,
    )


def ode_density(setup: Setup, velocity, tau_end: float | None = None, *, rtol: float = 1e-6,
                atol: float = 1e-6) -> Array:
    """The density of an ODE flow from the exact ``p_T`` at the cell centres, by characteristics
    with the log-Jacobian (:func:`odesde.fp_grid.ode_log_density`); ``velocity(x, tau)``."""
    tau_end = setup.horizon if tau_end is None else tau_end
    return jnp.exp(ode_log_density(
        velocity, setup.log_prob(setup.sde.T), setup.grid.points(), tau_end, rtol=rtol, atol=atol
    ))


#: Cells of the fine grid on which exact quantile functions are tabulated.


def _emd_coarsen(grid: Grid) -> int:
    """The smallest block size that keeps a 2-D grid W2 within POT's dense budget (1 in 1-D)."""
    if grid.dim == 1:
        return 1
    c = 1
    while (grid.num_cells // c) ** 2 > 1024 or grid.num_cells % c:
        c += 1
    return c
