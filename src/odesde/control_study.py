"""The experiments of the controllability chapter (``notebooks/neural_sde_control.ipynb``).

Elamvazhuthi, Oymak and Pasqualetti: only the abstract was available, so every experiment here
is the companion's own illustration of the digest's claims (Secs. 4-5, E0-E4, criteria R0-R3),
built on :mod:`odesde.fp_grid` (grid solver, characteristics, grid metrics) and
:mod:`odesde.control` (perturbed scores, controls, training). The notebook stays thin: it picks
parameters, calls these functions, draws and checks.

- :class:`Setup`: the OU process, a target with exact marginals, a grid and the early-stop time.
- :func:`e0_sanity`: exact scores, reverse SDE (grid) and PF-ODE (characteristics), snapshots.
- :func:`e1_sweep`: the score perturbation ``c_k(t) sin(k x)`` of fixed ``L2(p_t)`` size.
- :func:`e2_dsm`: DSM-trained scores, terminal errors against the weighted score error.
- :func:`e3_controls`: width-``d`` piecewise-constant controls against a wide baseline.
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
from typing import Any, Callable

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
    field_profile,
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
    "Setup",
    "Errors",
    "errors",
    "e0_sanity",
    "forward_snapshots",
    "score_lipschitz",
    "e1_sweep",
    "LogTimeDSM",
    "e2_dsm",
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
]

#: The chapter's targets: the disconnected support (digest: ``[-2, -1] U [1, 2]``) and a smooth
#: bimodal Gaussian mixture (E3's reference: exact, and reachable by smooth controls).
TARGETS = ("two-intervals", "mixture")


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


def make_target(name: str, *, gap: float = 2.0):
    """A 1-D target by name: ``"two-intervals"`` (two unit intervals ``gap`` apart, centred) or
    ``"mixture"`` (:func:`bimodal_mixture`)."""
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
    """The OU process, a 1-D target, the grid and the early-stopping time ``t_0``.

    Args:
        sde: the forward process (:func:`ou_process`).
        target: a target with exact ``marginal_log_prob`` and ``score_fn``.
        grid: a 1-D :class:`odesde.fp_grid.Grid`.
        t_min: ``t_0`` (digest: ``[1e-3, 1e-2]``).
    """

    sde: SDE
    target: Any
    grid: Grid
    t_min: float

    def __post_init__(self):
        if not isinstance(self.grid, Grid) or self.grid.dim != 1:
            raise ValueError(f"Setup: grid must be a 1-D odesde Grid, got {self.grid!r}")
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
    prof = field_profile(setup.target.score_fn(setup.sde), jnp.asarray(times, dtype=float),
                         fine_points(setup.grid))
    return np.asarray(prof.lipschitz)


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
           atol: float = 1e-6, progress: bool = True) -> list[dict]:
    """E2: small MLP scores trained by DSM on the target, snapshotted at training ``budgets``.

    One run per width (``ScoreMLP``, depth 2, :class:`LogTimeDSM` on ``[t_0, T]``, Adam);
    each snapshot is assessed by the exact weighted score error
    ``int_{t_0}^T int |s - grad log p_t|^2 p_t dx dt`` (grid, trapezoid on ``num_times``
    log-spaced times) and by the terminal errors of the reverse SDE and the PF-ODE with that score.

    Returns:
        One dict per (width, budget): ``width``, ``steps``, ``score_error``, ``sde``, ``ode``
        (:class:`Errors`; the ODE's W2 from particles), ``final_loss`` (mean DSM loss over the
        last 50 steps).
    """
    budgets = sorted(set(_positive_ints("e2_dsm: budgets", budgets)))
    widths = _positive_ints("e2_dsm: widths", widths)
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
        with tqdm(total=budgets[-1], desc=f"E2 DSM, width {width}", disable=not progress) as bar:
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


def e3_controls(setup: Setup, *, intervals, key: PRNGKeyArray, adam_steps: int,
                solver_steps: int, num_snapshots: int, num_particles: int,
                baseline_width: int = 64, learning_rate: float = 5e-2, rtol: float = 1e-6,
                atol: float = 1e-6, progress: bool = True) -> dict:
    """E3: width-``d`` (``d = 1``) piecewise-constant controls ``W_k tanh(A_k x + b_k)`` on ``K``
    equal intervals, trained through the grid solver to track the exact reverse-OU FP trajectory
    from ``p_T`` to ``p_{t_0}`` (computed with the same solver and steps), the wide baseline
    (:class:`odesde.control.MLPControl`), and the ODE counterpart (the same controls, trained with
    the sorted-quantile W2 loss, evaluated in L2 by characteristics).

    Every ``K`` must divide ``solver_steps``, and ``num_snapshots`` must divide it too.

    Returns:
        A dict: ``intervals``; per-``K`` arrays ``sde_sup_l2``, ``sde_final_l2``, ``ode_sup_w2``,
        ``ode_final_w2``, ``ode_final_l2``; the baseline's ``wide_sup_l2``, ``wide_final_l2``;
        ``reference_sup_norm`` (max over snapshots of ``||rho_ref||_{L2}``); the loss curves; the
        trained controls ``controls_sde``, ``controls_ode`` (by ``K``); ``taus`` of the snapshots,
        ``reference``, ``trajectory_sde`` (largest ``K``), ``trajectory_wide`` and
        ``initial_w2`` (W2 from ``p_T`` to ``p_{t_0}``, the distance the control must move mass).
    """
    intervals = _positive_ints("e3_controls: intervals", intervals)
    solver_steps = _int_at_least("e3_controls: solver_steps", solver_steps, 1)
    for k in intervals + [num_snapshots]:
        if solver_steps % k:
            raise ValueError(
                f"e3_controls: solver_steps={solver_steps} must be a multiple of every K in "
                f"intervals={intervals} and of num_snapshots={num_snapshots}")
    grid, sde = setup.grid, setup.sde
    horizon = setup.horizon
    taus = setup.taus(solver_steps, spacing="uniform")
    every = solver_steps // num_snapshots
    rho0 = setup.start()
    reference = solve_fp(ReverseSDE(sde, setup.target.score_fn(sde)), rho0, taus, grid=grid,
                         save_every=every)
    sde_loss = TrackingLoss(grid, rho0, reference, taus, every)
    ode_loss = QuantileW2Loss.from_densities(grid, rho0, reference, taus, every, num_particles)
    ref_times = taus[::every]
    out: dict[str, Any] = {name: [] for name in (
        "sde_sup_l2", "sde_final_l2", "ode_sup_w2", "ode_final_w2", "ode_final_l2")}
    out.update(controls_sde={}, controls_ode={}, losses_sde={}, losses_ode={})
    for i, k in enumerate(intervals):
        k_sde, k_ode, k_train = jax.random.split(jax.random.fold_in(key, k), 3)
        trained = train_control(
            PiecewiseControl(1, k, horizon, key=k_sde), sde_loss, num_steps=adam_steps,
            key=k_train, learning_rate=learning_rate, progress=progress, description=f"E3 SDE, K={k}")
        err = np.asarray(sde_loss.errors(trained.control))
        out["sde_sup_l2"].append(float(err.max()))
        out["sde_final_l2"].append(float(err[-1]))
        out["controls_sde"][k], out["losses_sde"][k] = trained.control, trained.losses
        if k == intervals[-1]:
            out["trajectory_sde"] = np.asarray(sde_loss.trajectory(trained.control))
        ode = train_control(
            PiecewiseControl(1, k, horizon, key=k_ode), ode_loss, num_steps=adam_steps,
            key=k_train, learning_rate=learning_rate, progress=progress, description=f"E3 ODE, K={k}")
        x = push_particles(ode.control, ode_loss.x0, taus, save_every=every)[..., 0]
        w2 = np.sqrt(np.mean((np.sort(np.asarray(x), -1) - np.asarray(ode_loss.quantiles)) ** 2, -1))
        out["ode_sup_w2"].append(float(w2.max()))
        out["ode_final_w2"].append(float(w2[-1]))
        rho_ode = jnp.exp(ode_log_density(ode.control, setup.log_prob(sde.T), grid.points(),
                                          horizon, rtol=rtol, atol=atol))
        out["ode_final_l2"].append(float(grid.l2(rho_ode, reference[-1])))
        out["controls_ode"][k], out["losses_ode"][k] = ode.control, ode.losses
        if k == intervals[-1]:
            out["ode_final_density"] = np.asarray(rho_ode)
    wide = train_control(
        MLPControl(1, horizon, key=jax.random.fold_in(key, 10_000), width=baseline_width),
        sde_loss, num_steps=adam_steps, key=jax.random.fold_in(key, 10_001),
        learning_rate=learning_rate, progress=progress, description="E3 wide baseline")
    werr = np.asarray(sde_loss.errors(wide.control))
    out.update(
        intervals=np.asarray(intervals),
        **{name: np.asarray(out[name]) for name in (
            "sde_sup_l2", "sde_final_l2", "ode_sup_w2", "ode_final_w2", "ode_final_l2")},
        wide_sup_l2=float(werr.max()), wide_final_l2=float(werr[-1]), losses_wide=wide.losses,
        trajectory_wide=np.asarray(sde_loss.trajectory(wide.control)),
        reference=np.asarray(reference), taus=np.asarray(ref_times),
        reference_sup_norm=float(np.max(np.asarray(jax.vmap(grid.l2)(reference, 0 * reference)))),
        initial_w2=float(grid.w2(reference[0], reference[-1])),
    )
    return out


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
    times = jnp.geomspace(t_min, sde.T, num_times)
    records = []
    for gap in tqdm(gaps, desc="E4 gaps", disable=not progress):
        setup = Setup(sde, make_target("two-intervals", gap=gap), grid, t_min)
        exact_score = setup.target.score_fn(sde)
        ode_prof = field_profile(_AtForwardTime(ReverseODE(sde, exact_score), sde.T), times,
                                 fine_points(grid))
        sde_prof = field_profile(_AtForwardTime(_Drift(ReverseSDE(sde, exact_score)), sde.T),
                                 times, fine_points(grid))
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
            ode_budget=float(jnp.trapezoid(ode_prof.max_expansion, times)),
            sde_budget=float(jnp.trapezoid(sde_prof.sup_norm, times)),
            sde=errors(grid, rho_sde, exact),
            ode=errors(grid, rho_ode, exact, w2=particle_w2(setup, x, t_min),
                       l2=particle_l2(setup, x, log_rho, t_min)),
            gap_mass=gap_mass,
        ))
    return records


class _AtForwardTime(eqx.Module):
    """``v(x, t) = field(x, T - t)``: a reverse-time field seen in forward time (so that the
    budgets integrate over forward times, ``dtau = dt``)."""

    field: Callable
    T: float

    def __call__(self, x, t):
        return self.field(x, self.T - t)


class _Drift(eqx.Module):
    dynamics: Any

    def __call__(self, x, tau):
        return self.dynamics.drift(x, tau)


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

