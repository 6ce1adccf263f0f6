"""Controlled neural SDEs and ODEs tracking Fokker–Planck trajectories (Elamvazhuthi et al.).

The companion's illustrations of the digest's claims (Secs. 2 and 4, reconstructed from the
abstract; nothing here reproduces a figure of the paper):

- E0 references: :func:`field_profile` (``sup_x`` of ``|v|``, of the expansion rate and of the
  Lipschitz constant of a field against time; with the exact score, the Lipschitz blow-up of a
  disconnected support) and :func:`weighted_score_error` (E2's ``int int |s - grad log p_t|^2 p_t``).
- E1: :class:`SinePerturbedScore`, ``s + c_k(t) sin(k x)`` with ``||c_k(t) sin(k .)||_{L2(p_t)}
  = eta`` at every ``t`` (closed form for Gaussian mixtures and uniform boxes).
- E3: controls :class:`PiecewiseControl` (``W(tau) sigma(A(tau) x + b(tau))``, piecewise constant
  on ``K`` intervals; width ``d`` by default) and the wide baseline :class:`MLPControl`; the
  controlled SDE :class:`ControlledSDE`; losses :class:`TrackingLoss` (L2 through the grid solver)
  and :class:`QuantileW2Loss` (1-D ODE, sorted-quantile W2); :func:`train_control` (optax).

The grid solver, characteristics and grid metrics live in :mod:`odesde.fp_grid`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray
from tqdm import tqdm  # text bars: no widget state in executed notebooks

from .fp_grid import Grid, VectorField, push_particles, solve_fp
from .sde import SDE
from .targets import GaussianMixture, UniformBoxes
from .training import NonFiniteLossError

__all__ = [
    "ControlledSDE",
    "PiecewiseControl",
    "MLPControl",
    "TrackingLoss",
    "QuantileW2Loss",
    "ControlTrainResult",
    "train_control",
    "SinePerturbedScore",
    "FieldProfile",
    "field_profile",
    "weighted_score_error",
]

Scalar = Float[ArrayLike, ""]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Controls


class PiecewiseControl(eqx.Module):
    """``f(x, tau) = W_k sigma(A_k x + b_k)`` for ``tau`` in the ``k``-th of ``K`` equal intervals.

    The digest's width-``d`` network with weights as controls (Sec. 2, E3; reconstructed): with
    ``width = d``, ``W, A`` are ``d x d`` and ``b`` is in ``R^d``, 3 scalars per interval in 1-D
    and 10 in 2-D. A larger ``width`` gives the wide network ``sum_j a_j sigma(w_j . x + b_j)``
    with piecewise-constant weights.

    Interval ``k`` is ``[k h, (k + 1) h)`` with ``h = horizon / K``; the grid solver evaluates the
    drift at step midpoints, so steps that do not straddle a switch see one control (use uniform
    steps, a multiple of ``K`` in number).

    ``K`` is an array field (:attr:`active`), not a shape: the weight arrays have ``capacity >=
    K`` rows, of which the first ``K`` are used (the others get zero gradients and stay at their
    initial values). Controls with different ``K`` and one capacity therefore share their
    compiled programs, and can be trained together as one stack (E3's sweep over ``K``).

    Args:
        dim: ``d``.
        num_intervals: ``K``.
        horizon: the time span covered by the ``K`` intervals.
        width: hidden width (default ``d``).
        key: PRNG key for the initial weights: ``A, b ~ N(0, 1)``, ``W ~ N(0, init_scale^2)``.
        init_scale: standard deviation of the initial ``W`` (small: the initial drift is mild).
        activation: ``sigma``, with ``sigma(0) = 0`` for the single-neuron argument of the digest.
        capacity: rows of the weight arrays (default ``K``; at least ``K``).
    """

    W: Float[Array, "C d n"]
    A: Float[Array, "C n d"]
    b: Float[Array, "C n"]
    active: Int[Array, ""]
    horizon: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_intervals: int,
        horizon: float,
        *,
        key: PRNGKeyArray,
        width: int | None = None,
        init_scale: float = 0.1,
        activation: Callable = jnp.tanh,
        capacity: int | None = None,
    ):
        dim = _positive_int("PiecewiseControl: dim", dim)
        k = _positive_int("PiecewiseControl: num_intervals", num_intervals)
        n = dim if width is None else _positive_int("PiecewiseControl: width", width)
        rows = k if capacity is None else _positive_int("PiecewiseControl: capacity", capacity)
        if rows < k:
            raise ValueError(f"PiecewiseControl: capacity={rows} must be >= num_intervals={k}")
        if not horizon > 0:
            raise ValueError(f"PiecewiseControl: horizon must be > 0, got {horizon!r}")
        kw, ka, kb = jax.random.split(key, 3)
        self.W = init_scale * jax.random.normal(kw, (rows, dim, n))
        self.A = jax.random.normal(ka, (rows, n, dim))
        self.b = jax.random.normal(kb, (rows, n))
        self.active = jnp.asarray(k, dtype=int)
        self.horizon = float(horizon)
        self.activation = activation

    @property
    def num_intervals(self) -> Array:
        """``K`` (an array: a traced value inside ``jit``)."""
        return self.active

    def interval(self, tau: Scalar) -> Array:
        """The index ``k`` of the interval holding ``tau`` (clipped to ``0..K-1``)."""
        tau = jnp.asarray(tau, dtype=float)
        k = jnp.floor(tau / self.horizon * self.active.astype(float)).astype(int)
        return jnp.clip(k, 0, self.active - 1)

    def __call__(self, x: Float[Array, " d"], tau: Scalar) -> Float[Array, " d"]:
        k = self.interval(tau)
        return self.W[k] @ self.activation(self.A[k] @ x + self.b[k])


class MLPControl(eqx.Module):
    """The wide baseline of E3: a time-conditioned MLP ``f(x, tau) = MLP(x, tau / horizon)``.

    Args:
        dim: ``d``.
        horizon: the time span (inputs ``tau / horizon`` lie in ``[0, 1]``).
        key: PRNG key.
        width: hidden width (digest: 64).
        depth: number of hidden layers.
    """

    mlp: eqx.nn.MLP
    horizon: float = eqx.field(static=True)

    def __init__(self, dim: int, horizon: float, *, key: PRNGKeyArray, width: int = 64, depth: int = 2):
        dim = _positive_int("MLPControl: dim", dim)
        if not horizon > 0:
            raise ValueError(f"MLPControl: horizon must be > 0, got {horizon!r}")
        self.mlp = eqx.nn.MLP(
            dim + 1,
            dim,
            _positive_int("MLPControl: width", width),
            _positive_int("MLPControl: depth", depth),
            activation=jnp.tanh,
            key=key,
        )
        self.horizon = float(horizon)

    def __call__(self, x: Float[Array, " d"], tau: Scalar) -> Float[Array, " d"]:
        s = jnp.reshape(jnp.asarray(tau, dtype=x.dtype) / self.horizon, (1,))
        return self.mlp(jnp.concatenate([x, s]))


class ControlledSDE(eqx.Module):
    """The neural SDE ``dX = f(X, tau) dtau + sqrt(2 D) dW`` as FP dynamics for the grid solver.

    Digest Sec. 2: ``D = 1`` (generator ``Laplace``, noise ``sqrt 2``), the same noise as the
    reverse OU process.
    """

    control: VectorField
    noise: float = 1.0

    def drift(self, x: Float[Array, " d"], tau: Scalar) -> Float[Array, " d"]:
        return self.control(x, tau)

    def diffusion(self, tau: Scalar) -> Float[Array, ""]:
        return jnp.asarray(self.noise, dtype=float)


# --------------------------------------------------------------------------------------------
# Losses


def _snapshot_steps(taus: Array, every: int) -> Array:
    return jnp.diff(taus[::every])


class TrackingLoss(eqx.Module):
    """E3's SDE loss ``J = sum_j ||rho^theta_{tau_j} - rho_{tau_j}||_{L2}^2 (tau_j - tau_{j-1})``.

    ``rho^theta`` solves the controlled FP equation with :func:`odesde.fp_grid.solve_fp` on
    ``taus``; the snapshots are ``taus[::save_every]``. Compute ``reference`` with the same solver,
    grid and steps (digest E3: discretisation errors then cancel).

    Args:
        grid: the grid.
        rho0: initial density, ``grid.shape``.
        reference: ``(M // save_every + 1, *grid.shape)`` reference densities at the snapshots.
        taus: ``(M + 1,)`` solver steps.
        save_every: steps between snapshots.
        noise: ``D`` of :class:`ControlledSDE`.
    """

    grid: Grid
    rho0: Array
    reference: Array
    taus: Array
    save_every: int = eqx.field(static=True)
    noise: float = 1.0

    def __check_init__(self):
        expected = ((self.taus.shape[0] - 1) // self.save_every + 1, *self.grid.shape)
        if self.reference.shape != expected:
            raise ValueError(
                f"TrackingLoss: reference must have shape {expected} (snapshots every "
                f"{self.save_every} of {self.taus.shape[0] - 1} steps), got {self.reference.shape}"
            )

    def trajectory(self, control) -> Array:
        """The controlled densities at the snapshots."""
        return solve_fp(
            ControlledSDE(control, self.noise),
            self.rho0,
            self.taus,
            grid=self.grid,
            save_every=self.save_every,
        )

    def errors(self, control) -> Array:
        """``||rho^theta - rho||_{L2}`` at every snapshot (initial included)."""
        return jax.vmap(self.grid.l2)(self.trajectory(control), self.reference)

    def __call__(self, control, key: PRNGKeyArray | None = None) -> Float[Array, ""]:
        err = self.errors(control)[1:]
        return jnp.sum(err**2 * _snapshot_steps(self.taus, self.save_every))


class QuantileW2Loss(eqx.Module):
    """E3's 1-D ODE loss: ``sum_j W2^2(X_{tau_j}, rho_{tau_j}) (tau_j - tau_{j-1})`` by quantiles.

    ``n`` particles start at the quantiles ``u_i = (i - 1/2) / n`` of ``rho0`` and follow the
    control with :func:`odesde.fp_grid.push_particles`; ``W2^2`` is the mean squared gap between
    the sorted particles and the reference quantiles at the same ``u_i`` (the digest's
    differentiable sorted-quantile W2).

    Build with :meth:`from_densities`.
    """

    x0: Float[Array, "n 1"]
    quantiles: Float[Array, "J n"]
    taus: Array
    save_every: int = eqx.field(static=True)

    @classmethod
    def from_densities(
        cls, grid: Grid, rho0: ArrayLike, reference: ArrayLike, taus: ArrayLike, save_every: int,
        num_particles: int = 1000,
    ) -> "QuantileW2Loss":
        """From a 1-D initial density and reference snapshots (as for :class:`TrackingLoss`)."""
        if grid.dim != 1:
            raise ValueError(f"QuantileW2Loss needs a 1-D grid, got dim={grid.dim}")
        n = _positive_int("QuantileW2Loss: num_particles", num_particles)
        u = (jnp.arange(n, dtype=float) + 0.5) / n
        quantiles = jax.vmap(grid.quantile, (0, None))(jnp.asarray(reference), u)
        x0 = grid.quantile(jnp.asarray(rho0), u)[:, None]
        return cls(x0, quantiles, jnp.asarray(taus, dtype=float), save_every)

    def __call__(self, control, key: PRNGKeyArray | None = None) -> Float[Array, ""]:
        x = push_particles(control, self.x0, self.taus, save_every=self.save_every)[..., 0]
        w2_sq = jnp.mean((jnp.sort(x, axis=-1) - self.quantiles) ** 2, axis=-1)
        return jnp.sum(w2_sq[1:] * _snapshot_steps(self.taus, self.save_every))


# --------------------------------------------------------------------------------------------
# Training


@functools.lru_cache(maxsize=32)
def _default_optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
    # Cached so that repeated runs (seeds) reuse one optimiser object, hence one compilation.
    return optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))


@eqx.filter_jit
def _train_step(control, opt_state, loss, key, *, optimizer):
    value, grads = eqx.filter_value_and_grad(loss)(control, key)
    # optax mixes float and int32 (e.g. b1 ** count): allowed only by standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(
            grads, opt_state, eqx.filter(control, eqx.is_inexact_array)
        )
    return eqx.apply_updates(control, updates), opt_state, value, optax.tree.norm(grads)


class ControlTrainResult(NamedTuple):
    """What :func:`train_control` returns."""

    control: Any
    losses: np.ndarray


def train_control(
    control,
    loss: Callable,
    *,
    num_steps: int,
    key: PRNGKeyArray,
    learning_rate: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = True,
    description: str = "control",
) -> ControlTrainResult:
    """Train a control by gradient descent through the solver (digest E3).

    Step ``i`` calls ``loss(control, jax.random.fold_in(key, i))``; deterministic losses ignore
    the key, so a run is a function of its inputs only. A NaN or inf loss or gradient raises
    :class:`odesde.training.NonFiniteLossError` with the step number.

    Args:
        control: an equinox module (its inexact arrays are trained).
        loss: ``loss(control, key) -> scalar``, e.g. :class:`TrackingLoss`; an equinox module is
            passed to the jitted step as an argument (its arrays are not baked in).
        num_steps: Adam steps (digest: 300 quick, 1500 full).
        key: the run's PRNG key.
        learning_rate: peak learning rate of the default optimiser, Adam with cosine decay to 0
            (digest: ``1e-2``).
        optimizer: an optax transformation replacing the default.
        progress: show a tqdm bar.
        description: the bar's label.

    Returns:
        A :class:`ControlTrainResult`: the trained control and the ``num_steps`` losses (each
        evaluated before its update).
    """
    num_steps = _positive_int("train_control: num_steps", num_steps)
    if optimizer is None:
        if not learning_rate > 0:
            raise ValueError(f"train_control: learning_rate must be > 0, got {learning_rate!r}")
        optimizer = _default_optimizer(float(learning_rate), num_steps)
    opt_state = optimizer.init(eqx.filter(control, eqx.is_inexact_array))
    step = functools.partial(_train_step, optimizer=optimizer)

    losses = []
    with tqdm(total=num_steps, desc=description, disable=not progress) as bar:
        for i in range(num_steps):
            new_control, new_state, value, grad_norm = step(
                control, opt_state, loss, jax.random.fold_in(key, i)
            )
            value, grad_norm = float(value), float(grad_norm)
            for name, v in (("loss", value), ("grad_norm", grad_norm)):
                if not np.isfinite(v):
                    raise NonFiniteLossError(i, name, v, control)
            control, opt_state = new_control, new_state
            losses.append(value)
            bar.update(1)
            if i % 25 == 0 or i == num_steps - 1:
                bar.set_postfix(loss=f"{value:.4g}")
    return ControlTrainResult(control, np.asarray(losses))


# --------------------------------------------------------------------------------------------
# E1: score perturbations of fixed L2(p_t) size


class SinePerturbedScore(eqx.Module):
    """``s(x, t) + c_k(t) sin(k x)`` (componentwise), with ``||c_k(t) sin(k .)||_{L2(p_t)} = eta``.

    E1 of the digest (the companion's illustration): the ``L2(p_t)`` size of the perturbation is
    ``eta`` at every ``t`` (digest pitfall: otherwise Lipschitz and ``L2`` sizes are confounded)
    while its Lipschitz constant grows like ``eta k``. The normalisation is exact:
    ``c_k(t)^2 sum_i E[sin^2(k X_i)] = eta^2`` with ``E sin^2(k X) = (1 - E cos(2 k X)) / 2`` and
    the characteristic function of the noised marginal ``X_i`` along axis ``i`` (a Gaussian
    mixture, or uniform intervals convolved with ``N(0, sigma_t^2)``).

    Args:
        target: a :class:`odesde.targets.GaussianMixture` or :class:`odesde.targets.UniformBoxes`
            (e.g. ``TwoIntervals``), the data whose noised marginals ``p_t`` weigh the norm.
        sde: the forward SDE.
        eta: the ``L2(p_t)`` size, ``>= 0``.
        frequency: ``k > 0``.
        score: the score to perturb; default the exact ``target.score_fn(sde)``.
    """

    target: GaussianMixture | UniformBoxes
    sde: SDE
    eta: Float[Array, ""]
    frequency: Float[Array, ""]
    score: VectorField

    def __init__(self, target, sde: SDE, *, eta: float, frequency: float, score=None):
        if not isinstance(target, (GaussianMixture, UniformBoxes)):
            raise TypeError(
                "SinePerturbedScore: target must be a GaussianMixture or UniformBoxes (closed-form "
                f"characteristic function), got {type(target).__name__}"
            )
        if not eta >= 0:
            raise ValueError(f"SinePerturbedScore: eta must be >= 0, got {eta!r}")
        if not frequency > 0:
            raise ValueError(f"SinePerturbedScore: frequency must be > 0, got {frequency!r}")
        self.target, self.sde = target, sde
        self.eta = jnp.asarray(eta, dtype=float)
        self.frequency = jnp.asarray(frequency, dtype=float)
        self.score = target.score_fn(sde) if score is None else score

    def _mean_cos(self, omega: Array, t: Scalar) -> Float[Array, " d"]:
        """``E cos(omega X_i)`` under ``p_t``, per axis ``i``."""
        alpha, var = self.sde.mean_scale(t), self.sde.noise_variance(t)
        tgt = self.target
        if isinstance(tgt, GaussianMixture):
            means = alpha * tgt.means  # (K, d)
            variances = alpha**2 * jnp.diagonal(tgt.covs, axis1=-2, axis2=-1) + var
            per = jnp.cos(omega * means) * jnp.exp(-0.5 * omega**2 * variances)
        else:
            s = omega * alpha
            # E cos(s U), U ~ U[l, h]: (sin(s h) - sin(s l)) / (s (h - l)).
            uniform = (jnp.sin(s * tgt.highs) - jnp.sin(s * tgt.lows)) / (s * (tgt.highs - tgt.lows))
            per = uniform * jnp.exp(-0.5 * omega**2 * var)
        return tgt.weights @ per

    def amplitude(self, t: Scalar) -> Float[Array, ""]:
        """``c_k(t)``."""
        mean_sin_sq = 0.5 * (1.0 - self._mean_cos(2.0 * self.frequency, t))
        return self.eta / jnp.sqrt(jnp.sum(mean_sin_sq))

    def perturbation(self, x: Float[Array, " d"], t: Scalar) -> Float[Array, " d"]:
        """``delta_k(x, t) = c_k(t) sin(k x)``."""
        return self.amplitude(t) * jnp.sin(self.frequency * x)

    def __call__(self, x: Float[Array, " d"], t: Scalar) -> Float[Array, " d"]:
        return self.score(x, t) + self.perturbation(x, t)


# --------------------------------------------------------------------------------------------
# E0 / E2 / E4 references


class FieldProfile(NamedTuple):
    """Sup-norms of a field over points, against time (arrays over the times).

    Integrate with ``jnp.trapezoid(profile.lipschitz, times)`` for E4's budgets.
    """

    sup_norm: Array  # sup_x |v(x, t)|
    max_expansion: Array  # sup_x of the largest eigenvalue of (grad v + grad v^T) / 2 (1-D: v')
    lipschitz: Array  # sup_x of the spectral norm of grad v


def field_profile(field: VectorField, times: ArrayLike, points: Float[ArrayLike, "*batch d"]) -> FieldProfile:
    """``sup_x |v|``, ``sup_x`` expansion rate and ``sup_x ||grad v||`` at each time.

    E0: with ``field = target.score_fn(sde)`` the ``lipschitz`` row is the score's Lipschitz
    constant on the points, which blows up like ``gap^2 / sigma_t^4`` as ``t -> 0`` for a
    disconnected support (digest Sec. 2). E4: the PF-ODE budget ``int sup_x v' dtau`` against the
    SDE's ``int sup_x |v| dtau``. The sup is over the given points only (e.g. ``grid.points()``).

    Args:
        field: ``v(x: (d,), t) -> (d,)``.
        times: ``(m,)`` times (the field's own time variable).
        points: ``(..., d)`` points.

    Returns:
        A :class:`FieldProfile` of ``(m,)`` arrays.
    """
    points = jnp.asarray(points, dtype=float)
    return _field_profile(field, jnp.atleast_1d(jnp.asarray(times, dtype=float)), points.reshape(-1, points.shape[-1]))


@eqx.filter_jit
def _field_profile(field, times, points):
    def at(t):
        v = jax.vmap(field, (0, None))(points, t)
        jac = jax.vmap(jax.jacfwd(field), (0, None))(points, t)
        sym = 0.5 * (jac + jnp.swapaxes(jac, -1, -2))
        return (
            jnp.max(jnp.linalg.norm(v, axis=-1)),
            jnp.max(jnp.linalg.eigvalsh(sym)[..., -1]),
            jnp.max(jnp.linalg.norm(jac, ord=2, axis=(-2, -1))),
        )

    return FieldProfile(*jax.lax.map(at, times))


def weighted_score_error(
    score: VectorField, target, sde: SDE, times: ArrayLike, grid: Grid
) -> Float[Array, ""]:
    """E2's ``int int |s(x, t) - grad log p_t(x)|^2 p_t(x) dx dt`` on the grid (trapezoid in t).

    Args:
        score: the score to assess, ``score(x: (d,), t) -> (d,)``.
        target: a target with ``marginal_log_prob`` and ``marginal_score``.
        sde: the forward SDE.
        times: ``(m,)`` increasing forward times (``m >= 2``), e.g. from ``t_0`` to ``T``.
        grid: the grid on which ``x`` is summed.

    Returns:
        The integral (a scalar).
    """
    times = jnp.asarray(times, dtype=float)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"weighted_score_error: times must be (m,) with m >= 2, got {times.shape}")
    exact = target.score_fn(sde)
    per_time = _score_error_per_time(score, exact, target, sde, times, grid)
    return jnp.trapezoid(per_time, times)


@eqx.filter_jit
def _score_error_per_time(score, exact, target, sde, times, grid):
    points = grid.points().reshape(-1, grid.dim)

    def at(t):
        diff = jax.vmap(score, (0, None))(points, t) - jax.vmap(exact, (0, None))(points, t)
        weight = jnp.exp(target.marginal_log_prob(points, t, sde=sde))
        return jnp.sum(jnp.sum(diff**2, -1) * weight) * grid.cell_volume

    return jax.lax.map(at, times)
