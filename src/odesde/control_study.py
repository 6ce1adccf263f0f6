"""The experiments of the controllability chapter (``notebooks/neural_sde_control.ipynb``).

Elamvazhuthi, Oymak and Pasqualetti: only the abstract was available, so every experiment here
is the companion's own illustration of the digest's claims (Secs. 4-5, E0-E4, criteria R0-R3),
built on :mod:`odesde.fp_grid` (grid solver, characteristics, grid metrics) and
:mod:`odesde.control` (perturbed scores, controls, training). The notebook stays thin: it picks
parameters, calls these functions, draws and checks.

- :class:`Setup`: the OU process, a target with exact marginals, a grid (1-D or 2-D) and the
  early-stop time.
- :func:`e0_sanity`: exact scores, reverse SDE (grid) and PF-ODE (characteristics), snapshots;
  :func:`e0_sanity_2d` the same in 2-D with POT W2 on samples; :func:`score_profile` the
  score's Lipschitz constant and E4's budgets (one program).
- :func:`e1_sweep`: the score perturbation ``c_k(t) sin(k x)`` of fixed ``L2(p_t)`` size.
- :func:`e2_dsm`: DSM-trained scores per seed, terminal errors against the weighted score error.
- :func:`e3_controls`: width-``d`` piecewise-constant controls (``d`` = 1, 2) against a wide
  baseline, the seeds trained as one stack (:class:`SeedSum`).
- :class:`Background`: an independent experiment in a worker thread while the next ones run.
- :func:`e4_tradeoff`: the disconnected-support budgets (descriptive).
- :func:`solver_convergence`, :func:`w2_against_pot`: checks of the solver and the metrics.
- :func:`ode_particles_with_density`, :func:`particle_l2`, :func:`particle_w2`: the ODE's L2 and
  W2 from quantile particles with the log-Jacobian (they resolve spikes narrower than a cell).

Conventions: the digest's OU process ``dX = -X dt + sqrt(2) dW`` (:func:`ou_process`); the reverse
processes start from the exact ``p_T`` (digest Sec. 3: isolates the drift effect from the
``O(e^{-T})`` prior mismatch, which is reported separately); errors are against the exact
``p_{t_0}`` at the cell centres.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray
from tqdm import tqdm  # text bars: no widget state in executed notebooks

from . import training
from .control import (
    MLPControl,
    PiecewiseControl,
    QuantileW2Loss,
    SinePerturbedScore,
    TrackingLoss,
    train_control,
    weighted_score_error,
)
from .fp_grid import (
    Grid,
    ReverseODE,
    ReverseSDE,
    ode_log_density,
    prior_log_prob,
    push_particles,
    reverse_times,
    solve_fp,
)
from .nets import ScoreMLP
from .sde import SDE, VPSDE
from .targets import GaussianMixture, TwoIntervals

__all__ = [
    "TARGETS",
    "ou_process",
    "make_target",
    "MixtureScore",
    "exact_score",
    "Setup",
    "Errors",
    "errors",
    "bimodal_mixture",
    "bimodal_mixture_2d",
    "e0_sanity",
    "e0_sanity_2d",
    "grid_samples",
    "emd_w2",
    "w2_grid_against_pot_2d",
    "forward_snapshots",
    "score_lipschitz",
    "ScoreProfile",
    "score_profile",
    "e1_sweep",
    "LogTimeDSM",
    "e2_dsm",
    "e2_summary",
    "SeedSum",
    "stack_controls",
    "unstack",
    "e3_controls",
    "e4_tradeoff",
    "solver_convergence",
    "w2_against_pot",
    "loglog_slope",
    "fine_points",
    "ode_particles",
    "ode_particles_with_density",
    "particle_l2",
    "particle_w2",
    "spearman",
    "Background",
]

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
QUANTILE_CELLS = 1 << 15


def quantile_levels(n: int) -> Array:
    """``u_i = (i - 1/2) / n``."""
    return (jnp.arange(n, dtype=float) + 0.5) / n


def exact_quantiles(setup: Setup, t: float, u: Array) -> Array:
    """The quantile function of ``p_t`` at ``u``, from ``2^15`` cells of the same box."""
    fine = Grid(QUANTILE_CELLS, setup.grid.half_width)
    return fine.quantile(fine.density(setup.log_prob(t)), u)


class _WithLogJacobian(eqx.Module):
    """The 1-D field ``(x, ell) -> (v(x, tau), -v'(x, tau))``: ``ell`` is the log-density change."""

    velocity: Callable

    def __call__(self, z, tau):
        v, dv = jax.jvp(lambda y: self.velocity(y, tau), (z[:1],), (jnp.ones_like(z[:1]),))
        return jnp.concatenate([v, -dv])


def ode_particles(setup: Setup, velocity, num_particles: int, num_steps: int,
                  *, save_every: int | None = None) -> Array:
    """Particles at the quantiles ``u_i`` of ``p_T`` pushed with RK4 on ``num_steps`` log-spaced
    steps to ``t_0`` (1-D: the flow is monotone, so they stay the quantiles of the flowed
    density). Log spacing keeps ``h Lip(v)`` below ~0.3 at ``t_0 = 0.01`` with 500 steps for
    the two-interval score (Lipschitz ~2500 there), inside RK4's stability region."""
    u = quantile_levels(num_particles)
    x0 = exact_quantiles(setup, setup.sde.T, u)[:, None]
    out = push_particles(velocity, x0, setup.taus(num_steps), save_every=save_every)
    return out[..., 0]


def ode_particles_with_density(setup: Setup, velocity, num_particles: int,
                               num_steps: int) -> tuple[Array, Array]:
    """As :func:`ode_particles`, carrying the log-Jacobian along (digest Sec. 3): returns the
    final particles ``X_i`` and the flowed log-density there, ``log p_T(x_i) - int v'(X) dtau``."""
    u = quantile_levels(num_particles)
    x0 = exact_quantiles(setup, setup.sde.T, u)
    z0 = jnp.stack([x0, jnp.zeros_like(x0)], -1)
    z = push_particles(_WithLogJacobian(velocity), z0, setup.taus(num_steps))
    return z[:, 0], setup.log_prob(setup.sde.T)(x0[:, None]) + z[:, 1]


def particle_l2(setup: Setup, x: Array, log_rho: Array, t: float) -> float:
    """The L2 distance of the flowed density to ``p_t`` from particles at the quantile levels
    (the digest's Monte-Carlo formula, here with quantile points):
    ``||rho - p||^2 = E_rho[rho(X)] - 2 E_rho[p(X)] + int p^2``, the expectations as means over
    the particles and ``int p^2`` on ``2^15`` cells. Unlike cell-centre values, this resolves
    density spikes narrower than a cell (a flow trapped between zeros of a fast perturbation)."""
    fine = Grid(QUANTILE_CELLS, setup.grid.half_width)
    p_sq = float(jnp.sum(fine.density(setup.log_prob(t)) ** 2) * fine.dx)
    e_rho = float(jnp.mean(jnp.exp(log_rho)))
    e_p = float(jnp.mean(jnp.exp(setup.log_prob(t)(x[:, None]))))
    return math.sqrt(max(e_rho - 2.0 * e_p + p_sq, 0.0))


def particle_w2(setup: Setup, x: Array, t: float) -> float:
    """``W2`` between ``n`` particles at the levels ``u_i`` and ``p_t``:
    ``sqrt(mean_i (sort(x)_i - Q_t(u_i))^2)`` (midpoint rule for the quantile formula)."""
    u = quantile_levels(x.shape[-1])
    return float(jnp.sqrt(jnp.mean((jnp.sort(x) - exact_quantiles(setup, t, u)) ** 2)))


# --------------------------------------------------------------------------------------------
# E0


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


# --------------------------------------------------------------------------------------------
# E1


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


# --------------------------------------------------------------------------------------------
# E2


class LogTimeDSM(eqx.Module):
    """Denoising score matching with ``log t`` uniform on ``[t_0, T]`` and weight ``sigma_t^2``:
    ``mean sigma_t^2 |s(x_t, t) + z / sigma_t|^2`` (1/2 of the sum over coordinates).

    Uniform times (:class:`odesde.training.DSMLoss`) put one sample in ~300 below ``t = 0.02``,
    where a disconnected support's score is hardest and matters most for the terminal density;
    log-uniform times spread the effort over the scales (the companion's choice for E2).
    Signature as the losses of :mod:`odesde.training`: ``loss(model, x0, key) -> (total, terms)``.
    """

    sde: SDE
    t_min: float = eqx.field(static=True)

    def __call__(self, model, x0, key):
        k_t, k_z = jax.random.split(key)
        log_t = jax.random.uniform(k_t, (x0.shape[0],), dtype=float, minval=math.log(self.t_min),
                                   maxval=math.log(float(self.sde.T)))
        t = jnp.exp(log_t)
        z = jax.random.normal(k_z, x0.shape, dtype=float)
        alpha = jax.vmap(self.sde.mean_scale)(t)[:, None]
        sigma = jax.vmap(self.sde.noise_std)(t)[:, None]
        err = jax.vmap(model)(alpha * x0 + sigma * z, t) + z / sigma
        total = jnp.mean(0.5 * jnp.sum((sigma * err) ** 2, -1))
        return total, {"dsm": total}


def e2_dsm(setup: Setup, *, budgets, widths, key: PRNGKeyArray, num_steps: int,
           num_particles: int, particle_steps: int = 500, batch_size: int = 256,
           learning_rate: float = 3e-3, num_times: int = 48, rtol: float = 1e-6,
           atol: float = 1e-6, n_seeds: int = 1, progress: bool = True) -> list[dict]:
    """E2: small MLP scores trained by DSM on the target, snapshotted at training ``budgets``.

    One run per seed and width (``ScoreMLP``, depth 2, :class:`LogTimeDSM` on ``[t_0, T]``,
    Adam); each snapshot is assessed by the exact weighted score error
    ``int_{t_0}^T int |s - grad log p_t|^2 p_t dx dt`` (grid, trapezoid on ``num_times``
    log-spaced times) and by the terminal errors of the reverse SDE and the PF-ODE with that score.
    Seed ``i`` draws every key from ``jax.random.fold_in(key, i)`` (digest Sec. 5: 3 seeds in the
    full profile); all seeds share the compiled programs.

    Returns:
        One dict per (seed, width, budget): ``seed``, ``width``, ``steps``, ``score_error``,
        ``sde``, ``ode`` (:class:`Errors`; the ODE's W2 from particles), ``final_loss`` (mean
        DSM loss over the last 50 steps).
    """
    budgets = sorted(set(_positive_ints("e2_dsm: budgets", budgets)))
    widths = _positive_ints("e2_dsm: widths", widths)
    n_seeds = _int_at_least("e2_dsm: n_seeds", n_seeds, 1)
    records = []
    for seed in range(n_seeds):
        for r in _e2_one_seed(setup, budgets, widths, jax.random.fold_in(key, seed), num_steps,
                              num_particles, particle_steps, batch_size, learning_rate, num_times,
                              rtol, atol, progress, f" (seed {seed})" if n_seeds > 1 else ""):
            records.append(dict(seed=seed, **r))
    return records


def e2_summary(records: list[dict]) -> dict:
    """E2 over seeds: per (width, budget), the mean and sd over seeds of
    ``sqrt(score_error)``, the SDE's and the ODE's terminal L2 (keys ``root_err``, ``sde_l2``,
    ``ode_l2`` with ``_mean`` and ``_sd``; ``width`` and ``steps`` give the groups, in the order
    of the records)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["width"], r["steps"]), []).append(r)
    out: dict[str, Any] = {"width": [], "steps": []}
    values = {
        "root_err": lambda r: math.sqrt(r["score_error"]),
        "sde_l2": lambda r: r["sde"].l2,
        "ode_l2": lambda r: r["ode"].l2,
    }
    for (width, steps), rs in groups.items():
        out["width"].append(width)
        out["steps"].append(steps)
        for name, get in values.items():
            v = np.asarray([get(r) for r in rs])
            out.setdefault(f"{name}_mean", []).append(float(v.mean()))
            out.setdefault(f"{name}_sd", []).append(float(v.std(ddof=1)) if v.size > 1 else 0.0)
    return {k: np.asarray(v) for k, v in out.items()}


def _e2_one_seed(setup, budgets, widths, key, num_steps, num_particles, particle_steps,
                 batch_size, learning_rate, num_times, rtol, atol, progress, label):
    sde, grid = setup.sde, setup.grid
    loss = LogTimeDSM(sde, setup.t_min)
    optimizer = training.make_optimizer(learning_rate)
    times = jnp.geomspace(setup.t_min, sde.T, num_times)
    exact = setup.exact(setup.t_min)
    step = training.make_step(loss, optimizer, setup.target, batch_size)
    records = []
    for w, width in enumerate(widths):
        k_init, k_train = jax.random.split(jax.random.fold_in(key, w))
        model = ScoreMLP(1, key=k_init, width=width, depth=2, t_max=float(sde.T))
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        losses = []
        with tqdm(total=budgets[-1], desc=f"E2 DSM, width {width}{label}",
                  disable=not progress) as bar:
            for i in range(budgets[-1]):
                model, opt_state, total, _ = step(model, opt_state, jax.random.fold_in(k_train, i))
                total = float(total)
                if not math.isfinite(total):
                    raise training.NonFiniteLossError(i, "loss", total, model)
                losses.append(total)
                bar.update(1)
                if i + 1 in budgets:
                    score_error = float(weighted_score_error(model, setup.target, sde, times, grid))
                    rho_sde = sde_density(setup, model, num_steps)
                    velocity = ReverseODE(sde, model)
                    rho_ode = ode_density(setup, velocity, rtol=rtol, atol=atol)
                    x = ode_particles(setup, velocity, num_particles, particle_steps)
                    records.append(dict(
                        width=width, steps=i + 1, score_error=score_error,
                        sde=errors(grid, rho_sde, exact),
                        ode=errors(grid, rho_ode, exact, w2=particle_w2(setup, x, setup.t_min)),
                        final_loss=float(np.mean(losses[-50:])),
                        sde_density=np.asarray(rho_sde), ode_density=np.asarray(rho_ode),
                    ))
    return records


# --------------------------------------------------------------------------------------------
# E3


class SeedSum(eqx.Module):
    """``loss`` summed over a stack of independent controls (leading axis: seeds).

    The controls do not interact, so the gradient of the sum is each control's own gradient, and
    Adam (elementwise) trains every member exactly as a run of its own would: one compiled step
    trains all seeds, on batched (better vectorised) solves.
    """

    loss: Callable

    def __call__(self, controls, key: PRNGKeyArray | None = None):
        return jnp.sum(eqx.filter_vmap(lambda c: self.loss(c, key))(controls))


def stack_controls(make: Callable, keys: Array):
    """``make(key)`` for each key, stacked along a leading axis (``eqx.filter_vmap``)."""
    return eqx.filter_vmap(make)(keys)


def unstack(stack, i: int):
    """Member ``i`` of a stack made by :func:`stack_controls`."""
    return jax.tree.map(lambda v: v[i] if eqx.is_array(v) else v, stack)


def _stack_piecewise(dim: int, intervals: list[int], horizon: float, keys: Array, capacity: int):
    """Width-``d`` controls with ``intervals[m]`` intervals from ``keys[m]``, stacked; every
    member has ``capacity`` rows (so one structure for all), the first ``K`` in use."""
    stack = eqx.filter_vmap(
        lambda kk: PiecewiseControl(dim, capacity, horizon, key=kk, capacity=capacity))(keys)
    return eqx.tree_at(lambda c: c.active, stack, jnp.asarray(intervals, dtype=int))


def e3_controls(setup: Setup, *, intervals, key: PRNGKeyArray, adam_steps: int,
                solver_steps: int, num_snapshots: int, num_particles: int = 1000,
                baseline_width: int = 64, learning_rate: float = 5e-2, rtol: float = 1e-6,
                atol: float = 1e-6, n_seeds: int = 1, ode: bool | None = None,
                progress: bool = True) -> dict:
    """E3: width-``d`` piecewise-constant controls ``W_k tanh(A_k x + b_k)`` on ``K`` equal
    intervals (``d`` = the grid's dimension, 1 or 2: 3 or 10 parameters per interval), trained
    through the grid solver to track the exact reverse-OU FP trajectory from ``p_T`` to
    ``p_{t_0}`` (computed with the same solver and steps), the wide baseline
    (:class:`odesde.control.MLPControl`), and in 1-D the ODE counterpart (the same controls,
    trained with the sorted-quantile W2 loss, evaluated in L2 by characteristics; the digest's
    2-D Sinkhorn counterpart is not run).

    Every ``K`` must divide ``solver_steps``, and ``num_snapshots`` must divide it too. Seed ``i``
    draws its keys from ``jax.random.fold_in(key, i)`` (then ``fold_in(., K)``); all ``(K, seed)``
    pairs train together as one stack (:class:`SeedSum`: equal to separate runs, one
    compilation; ``K`` is a value of :class:`odesde.control.PiecewiseControl`, whose capacity is
    the largest ``K``), and so do the wide baseline's seeds.

    Returns:
        A dict: ``intervals``; per-``K`` seed means ``sde_sup_l2``, ``sde_final_l2`` and (1-D)
        ``ode_sup_w2``, ``ode_final_w2``, ``ode_final_l2``, each also per seed as
        ``NAME_seeds`` ``(n_seeds, len(intervals))``; the baseline's ``wide_sup_l2``,
        ``wide_final_l2`` (means) and ``wide_sup_l2_seeds``; ``reference_sup_norm`` (max over
        snapshots of ``||rho_ref||_{L2}``); the loss curves (mean over seeds); seed 0's trained
        controls ``controls_sde``, ``controls_ode`` (by ``K``); ``taus`` of the snapshots,
        ``reference``, seed 0's ``trajectory_sde`` (largest ``K``) and ``trajectory_wide``,
        ``ode_final_density`` (1-D), and ``initial_w2`` (W2 from ``p_T`` to ``p_{t_0}``, the
        distance the control must move mass).
    """
    intervals = _positive_ints("e3_controls: intervals", intervals)
    solver_steps = _int_at_least("e3_controls: solver_steps", solver_steps, 1)
    n_seeds = _int_at_least("e3_controls: n_seeds", n_seeds, 1)
    for k in intervals + [num_snapshots]:
        if solver_steps % k:
            raise ValueError(
                f"e3_controls: solver_steps={solver_steps} must be a multiple of every K in "
                f"intervals={intervals} and of num_snapshots={num_snapshots}")
    grid, sde = setup.grid, setup.sde
    dim = grid.dim
    ode = dim == 1 if ode is None else bool(ode)
    if ode and dim != 1:
        raise ValueError("e3_controls: the ODE counterpart (quantile W2 loss) is 1-D only")
    horizon = setup.horizon
    taus = setup.taus(solver_steps, spacing="uniform")
    every = solver_steps // num_snapshots
    rho0 = setup.start()
    reference = solve_fp(ReverseSDE(sde, exact_score(setup.target, sde)), rho0, taus, grid=grid,
                         save_every=every)
    sde_loss = TrackingLoss(grid, rho0, reference, taus, every)
    seed_keys = [jax.random.fold_in(key, s) for s in range(n_seeds)]
    # One forward program per control type gives the trajectories of all seeds.
    trajectories_of = eqx.filter_jit(eqx.filter_vmap(sde_loss.trajectory))
    l2_to_snapshots = jax.vmap(jax.vmap(grid.l2), in_axes=(0, None))  # (members, J + 1)

    def errors_of(stack):
        traj = trajectories_of(stack)
        return np.asarray(traj), np.asarray(l2_to_snapshots(traj, reference))

    names = ["sde_sup_l2", "sde_final_l2"] + (
        ["ode_sup_w2", "ode_final_w2", "ode_final_l2"] if ode else [])
    per_seed: dict[str, list] = {name: [] for name in names}
    out: dict[str, Any] = dict(controls_sde={}, controls_ode={}, losses_sde={}, losses_ode={})
    if ode:
        ode_loss = QuantileW2Loss.from_densities(grid, rho0, reference, taus, every, num_particles)
        push_all = eqx.filter_jit(eqx.filter_vmap(
            lambda c: push_particles(c, ode_loss.x0, taus, save_every=every)[..., 0]))
    # Every (K, seed) pair is one member of a stack trained at once: K is a value, not a shape
    # (PiecewiseControl's capacity is the largest K), so one compiled step serves the sweep.
    members = [(i, s) for i in range(len(intervals)) for s in range(n_seeds)]
    member_keys = jnp.stack([jax.random.split(jax.random.fold_in(seed_keys[s], intervals[i]), 3)
                             for i, s in members])
    member_k = [intervals[i] for i, _ in members]
    capacity = max(intervals)

    def make_stack(keys):
        return _stack_piecewise(dim, member_k, horizon, keys, capacity)

    def by_interval(values):  # (members, ...) -> (n_seeds, len(intervals), ...)
        values = np.asarray(values)
        out_ = np.empty((n_seeds, len(intervals)) + values.shape[1:], values.dtype)
        for m, (i, s) in enumerate(members):
            out_[s, i] = values[m]
        return out_

    k_train = jax.random.fold_in(key, 100_000)  # unused by these deterministic losses
    trained = train_control(
        make_stack(member_keys[:, 0]), SeedSum(sde_loss), num_steps=adam_steps, key=k_train,
        learning_rate=learning_rate, progress=progress,
        description=f"E3 SDE, d={dim}, K={intervals} x {n_seeds} seed(s)")
    traj, err = errors_of(trained.control)  # (members, J + 1)
    err = by_interval(err)  # (n_seeds, len(intervals), J + 1)
    per_seed["sde_sup_l2"] = list(np.moveaxis(err.max(-1), 1, 0))
    per_seed["sde_final_l2"] = list(np.moveaxis(err[..., -1], 1, 0))
    for i, k in enumerate(intervals):
        m = members.index((i, 0))
        out["controls_sde"][k] = unstack(trained.control, m)
        out["losses_sde"][k] = trained.losses / len(members)  # the stack's mean loss
    out["trajectory_sde"] = traj[members.index((len(intervals) - 1, 0))]
    if ode:
        trained_ode = train_control(
            make_stack(member_keys[:, 1]), SeedSum(ode_loss), num_steps=adam_steps, key=k_train,
            learning_rate=learning_rate, progress=progress,
            description=f"E3 ODE, K={intervals} x {n_seeds} seed(s)")
        x = np.asarray(push_all(trained_ode.control))  # (members, J + 1, n)
        w2 = by_interval(np.sqrt(np.mean((np.sort(x, -1) - np.asarray(ode_loss.quantiles)) ** 2, -1)))
        per_seed["ode_sup_w2"] = list(np.moveaxis(w2.max(-1), 1, 0))
        per_seed["ode_final_w2"] = list(np.moveaxis(w2[..., -1], 1, 0))
        # All members' characteristics in one vmapped adaptive solve (each keeps its own steps).
        rho_ode = jnp.exp(eqx.filter_vmap(
            lambda c: ode_log_density(c, setup.log_prob(sde.T), grid.points(), horizon, rtol=rtol,
                                      atol=atol))(trained_ode.control))
        l2s = jax.vmap(grid.l2, in_axes=(0, None))(rho_ode, reference[-1])
        out["ode_final_density"] = np.asarray(rho_ode[members.index((len(intervals) - 1, 0))])
        per_seed["ode_final_l2"] = list(np.moveaxis(by_interval(l2s), 1, 0))
        for i, k in enumerate(intervals):
            out["controls_ode"][k] = unstack(trained_ode.control, members.index((i, 0)))
            out["losses_ode"][k] = trained_ode.losses / len(members)
    wide_keys = jnp.stack([jax.random.fold_in(sk, 10_000) for sk in seed_keys])
    wide = train_control(
        stack_controls(lambda kk: MLPControl(dim, horizon, key=kk, width=baseline_width), wide_keys),
        SeedSum(sde_loss), num_steps=adam_steps, key=jax.random.fold_in(key, 10_001),
        learning_rate=learning_rate, progress=progress, description=f"E3 wide baseline, d={dim}")
    wtraj, werr = errors_of(wide.control)
    for name, rows in per_seed.items():
        arr = np.stack(rows, axis=1)  # (n_seeds, len(intervals))
        out[f"{name}_seeds"] = arr
        out[name] = arr.mean(0)
        out[f"{name}_sd"] = arr.std(0, ddof=1) if n_seeds > 1 else np.zeros(arr.shape[1])
    out.update(
        intervals=np.asarray(intervals), n_seeds=n_seeds, dim=dim,
        wide_sup_l2=float(werr.max(1).mean()), wide_final_l2=float(werr[:, -1].mean()),
        wide_sup_l2_seeds=werr.max(1),
        wide_sup_l2_sd=float(werr.max(1).std(ddof=1)) if n_seeds > 1 else 0.0,
        losses_wide=wide.losses / n_seeds,
        trajectory_wide=wtraj[0],
        reference=np.asarray(reference), taus=np.asarray(taus[::every]),
        reference_sup_norm=float(np.max(np.asarray(jax.vmap(grid.l2)(reference, 0 * reference)))),
        initial_w2=float(grid.w2(reference[0], reference[-1], coarsen=_emd_coarsen(grid))),
    )
    return out


def _emd_coarsen(grid: Grid) -> int:
    """The smallest block size that keeps a 2-D grid W2 within POT's dense budget (1 in 1-D)."""
    if grid.dim == 1:
        return 1
    c = 1
    while (grid.num_cells // c) ** 2 > 1024 or grid.num_cells % c:
        c += 1
    return c


# --------------------------------------------------------------------------------------------
# E4


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


# --------------------------------------------------------------------------------------------
# Checks of the solver and of the metrics


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


# --------------------------------------------------------------------------------------------
# Running an experiment while the next ones start


class Background:
    """``fn(*args, **kwargs)`` in a worker thread, started now; :meth:`result` waits for it.

    XLA releases the GIL while it compiles and runs, so on the 2-core reference machine an
    experiment that does not depend on the others (E2, E3) compiles and runs while the main
    thread works on; the numbers are the same as a run in the foreground (same programs, same
    keys). Background runs share :data:`WORKERS` threads and start in the order submitted.
    """

    WORKERS = 2  # one per core of the reference machine
    _pool = None

    def __init__(self, fn: Callable, /, *args, **kwargs):
        import concurrent.futures

        if Background._pool is None:
            Background._pool = concurrent.futures.ThreadPoolExecutor(self.WORKERS, "odesde-control")
        self.seconds = float("nan")
        self._future = Background._pool.submit(self._timed, fn, args, kwargs)

    def _timed(self, fn, args, kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds = time.perf_counter() - start
        return out

    def result(self):
        """The return value (an exception of the run is raised here)."""
        return self._future.result()
