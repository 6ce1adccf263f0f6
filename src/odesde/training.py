"""Losses, optimisers and the training loop for score networks.

Losses (each ``loss(model, x0, key) -> (total, terms)``, ``terms`` a dict of unweighted scalar
terms that the NaN guard names):

- :class:`DSMLoss`: denoising score matching (Vincent 2011; Song et al. 2021) with likelihood
  (``g^2``), ``sigma_t^2`` or no weighting, and uniform or Deveney et al.'s Beta(1, 2) times;
- :class:`ScoreFPELoss`: DSM plus the score Fokker–Planck residual of Lai et al., with
  :meth:`ScoreFPELoss.lai_official` reproducing the official code's regulariser;
- :class:`LogDensityFPLoss`: DSM plus the log-density Fokker–Planck residual of Deveney et al.
  on collocation points uniform in a box, with :meth:`LogDensityFPLoss.deveney`.

Training: :func:`make_optimizer` (optax Adam, warm-up, clipping), :func:`make_step` (one jitted
step that draws its own data; :func:`compile_step` compiles it ahead of time), :func:`train`
(tqdm progress, NaN/inf guard, checkpoints, resume). Loss weights are array leaves and
:func:`make_optimizer` returns one object per setting, so runs that differ only in weights or
that repeat a setting share one compiled step. Every step ``i`` uses the key ``fold_in(key, i)``, so a run is a pure function of its
seed: the same seed gives the same loss curve bit for bit, and a resumed run continues exactly
the curve of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm import tqdm  # text bars: no widget state in executed notebooks

from . import fokker_planck as fp
from .utils.files import atomic_open
from .sde import OUSDE, SDE

__all__ = [
    "sample_times",
    "DSMLoss",
    "ScoreFPELoss",
    "LogDensityFPLoss",
    "make_optimizer",
    "deveney_schedule",
    "lai_optimizer",
    "make_step",
    "compile_step",
    "NonFiniteLossError",
    "TrainResult",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
]

Weighting = Literal["likelihood", "sigma2", "none"]
TimeSampling = Literal["uniform", "beta12"]
Terms = dict[str, Array]


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: allowed are {', '.join(map(repr, allowed))}")


def _weight_array(value) -> Array:
    """A loss weight as a 0-d float array: a traced leaf of the loss, so that one compiled
    training step serves every value of a weight (a grid of lambdas compiles once)."""
    return jnp.asarray(value, dtype=float)


def _concrete(value) -> float | None:
    """``float(value)``, or ``None`` for a traced value (a loss rebuilt inside ``jit``)."""
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def _check_weights(owner: str, **weights) -> None:
    for name, value in weights.items():
        if jnp.ndim(value) != 0:
            raise ValueError(f"{owner}: {name} must be a scalar, got shape {jnp.shape(value)}")
        v = _concrete(value)
        if v is not None and not v >= 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {v}")


def sample_times(
    key: PRNGKeyArray, n: int, *, scheme: TimeSampling = "uniform", t_min: float, t_max: float
) -> Float[Array, " n"]:
    """Training times on ``[t_min, t_max]``.

    Args:
        key: PRNG key.
        n: number of times.
        scheme: ``"uniform"`` or ``"beta12"``: ``t_min + (t_max - t_min) B`` with
            ``B ~ Beta(1, 2)``,
            density decreasing linearly to 0 at ``t_max`` (Deveney et al. digest, Sec. 4:
            ``eps + 10 B``, i.e. ``t_max = 10 + eps``).
        t_min: smallest time.
        t_max: largest time.

    Returns:
        ``(n,)`` times.
    """
    _check_choice("time_sampling", scheme, ("uniform", "beta12"))
    if not 0 <= t_min < t_max:
        raise ValueError(f"sample_times needs 0 <= t_min < t_max, got {t_min}, {t_max}")
    if scheme == "uniform":
        return jax.random.uniform(key, (n,), minval=t_min, maxval=t_max)
    return t_min + (t_max - t_min) * jax.random.beta(key, 1.0, 2.0, (n,))


class _Perturbed(NamedTuple):
    x0: Array
    xt: Array
    t: Array
    z: Array
    sigma: Array


class DSMLoss(eqx.Module):
    """Denoising score matching for a forward SDE with Gaussian kernel.

    ``x_t = alpha_t x_0 + sigma_t z``; the kernel score is ``-z / sigma_t``; the loss is
    ``mean_batch lambda(t) r(s(x_t, t) + z / sigma_t)`` with reduction ``r`` over coordinates.

    Args:
        sde: the forward SDE.
        weighting: ``lambda(t)``: ``"likelihood"`` (``g(t)^2``, Song et al. 2021; the Lai et al.
            default), ``"sigma2"`` (``sigma_t^2``) or ``"none"`` (Deveney et al.).
        reduction: ``"mean"`` over coordinates (Deveney et al.: the mean over all ``N x d``
            entries) or ``"half_sum"``, half the sum (score_sde's ``reduce_mean=False``, the Lai
            et al. default config).
        time_sampling: ``"uniform"`` or ``"beta12"`` (see :func:`sample_times`).
        t_min: smallest training time (Lai et al.: ``1e-5``).
        t_max: largest training time; ``None`` for the SDE's ``T``.
    """

    sde: SDE
    weighting: str = eqx.field(default="likelihood", static=True)
    reduction: str = eqx.field(default="half_sum", static=True)
    time_sampling: str = eqx.field(default="uniform", static=True)
    t_min: float = eqx.field(default=1e-5, static=True)
    t_max: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        _check_choice("weighting", self.weighting, ("likelihood", "sigma2", "none"))
        _check_choice("reduction", self.reduction, ("mean", "half_sum"))
        _check_choice("time_sampling", self.time_sampling, ("uniform", "beta12"))
        if not 0 < self.t_min < self._t_max:
            raise ValueError(
                f"DSMLoss needs 0 < t_min < t_max, got t_min={self.t_min}, t_max={self._t_max}"
            )

    @property
    def _t_max(self) -> float:
        return float(self.sde.T) if self.t_max is None else float(self.t_max)

    def weight(self, t: Array) -> Array:
        """``lambda(t)``."""
        if self.weighting == "likelihood":
            return self.sde.diffusion(t) ** 2
        if self.weighting == "sigma2":
            return self.sde.noise_variance(t)
        return jnp.ones_like(t)

    def perturb(self, x0: Float[Array, "n d"], key: PRNGKeyArray) -> _Perturbed:
        """Draw times and noise and noise the data."""
        k_t, k_z = jax.random.split(key)
        t = sample_times(
            k_t, x0.shape[0], scheme=self.time_sampling, t_min=self.t_min, t_max=self._t_max
        )
        z = jax.random.normal(k_z, x0.shape)
        alpha = jax.vmap(self.sde.mean_scale)(t)[:, None]
        sigma = jax.vmap(self.sde.noise_std)(t)[:, None]
        return _Perturbed(x0, alpha * x0 + sigma * z, t, z, sigma)

    def dsm(self, model, p: _Perturbed) -> Array:
        """The DSM term at given perturbed points."""
        err = jax.vmap(model)(p.xt, p.t) + p.z / p.sigma
        per_sample = (
            jnp.mean(err**2, -1) if self.reduction == "mean" else 0.5 * jnp.sum(err**2, -1)
        )
        return jnp.mean(self.weight(p.t) * per_sample)

    def __call__(self, model, x0: Float[Array, "n d"], key: PRNGKeyArray) -> tuple[Array, Terms]:
        value = self.dsm(model, self.perturb(x0, key))
        return value, {"dsm": value}


class ScoreFPELoss(eqx.Module):
    """DSM plus the score Fokker–Planck regulariser of Lai et al. (digest, Sec. 2).

    ``L = L_DSM + weight * mean_b w(t_b) |eps(x_b, t_b)|^power / d^power
    + scalar_weight * || (scalar term at (x_b, t_b))_b ||_2``,
    with ``eps`` the score FPE residual (:func:`odesde.fokker_planck.score_fpe_residual`) and the
    scalar term :func:`odesde.fokker_planck.score_fpe_scalar_term`, both at the DSM's perturbed
    points and times (the code's ``fp_dist='pert'``; its ``'x'`` and ``'random'`` are not
    implemented). The scalar term uses the official plain L2 norm over the batch vector: not
    squared, not averaged, not weighted. It is biased at the true VP score (digest, Sec. 3):
    keep ``scalar_weight = 0`` unless reproducing the code.

    Terms reported: ``dsm``, ``fp`` (the weighted mean of ``|eps|^power / d^power``) and
    ``scalar`` (the batch norm), unweighted by ``weight`` and ``scalar_weight``.

    ``weight`` and ``scalar_weight`` are stored as 0-d arrays (traced leaves): losses that differ
    only in their weights share one compiled training step.

    Args:
        dsm: the DSM loss (also draws the evaluation points).
        weight: ``alpha_vec`` (the code's ``alpha``), the residual weight ``lambda``.
        scalar_weight: ``alpha_sc`` (the code's ``beta``).
        power: ``m``, the power of the residual norm.
        fp_weighting: ``w(t)``: ``"likelihood"`` (``g^2``, the code's ``'ll'``),
            ``"diffusion"`` (``g``, ``'convention'``), ``"none"`` (``'constant'``) or
            ``"sigma4"`` (``sigma_t^4``, σ-normalised; digest Sec. 6).
        normalise_by_dim: divide the residual term by ``d^power`` (the code does).
        divergence_method: ``"exact"`` or ``"hutchinson"``.
        num_probes: Hutchinson probes per point.
        probe: ``"gaussian"`` or ``"rademacher"``.
        time_derivative_method: ``"exact"`` or ``"finite_difference"``.
    """

    dsm: DSMLoss
    weight: Float[Array, ""] = eqx.field(default=1.0, converter=_weight_array)
    scalar_weight: Float[Array, ""] = eqx.field(default=0.0, converter=_weight_array)
    power: float = eqx.field(default=2.0, static=True)
    fp_weighting: str = eqx.field(default="likelihood", static=True)
    normalise_by_dim: bool = eqx.field(default=True, static=True)
    divergence_method: str = eqx.field(default="exact", static=True)
    num_probes: int = eqx.field(default=1, static=True)
    probe: str = eqx.field(default="gaussian", static=True)
    time_derivative_method: str = eqx.field(default="exact", static=True)

    def __check_init__(self):
        _check_choice(
            "fp_weighting", self.fp_weighting, ("likelihood", "diffusion", "none", "sigma4")
        )
        _check_choice("divergence_method", self.divergence_method, ("exact", "hutchinson"))
        _check_choice("probe", self.probe, ("gaussian", "rademacher"))
        _check_choice(
            "time_derivative_method", self.time_derivative_method, ("exact", "finite_difference")
        )
        _check_weights("ScoreFPELoss", weight=self.weight, scalar_weight=self.scalar_weight)
        if not self.power > 0:
            raise ValueError(f"ScoreFPELoss: power must be > 0, got {self.power}")

    @classmethod
    def lai_official(
        cls, sde: SDE, *, weight: float = 0.15, scalar_weight: float = 0.01
    ) -> "ScoreFPELoss":
        """The regulariser of the official ``sony/fp-diffusion`` code (Lai et al. digest, Sec. 2).

        Likelihood-weighted DSM (``g^2 / 2 sum``), ``t ~ U[1e-5, T]``; vector term ``m = 2``,
        ``w = g^2``, divided by ``d^2``, weight 0.15; scalar term, plain L2 norm over the batch,
        weight 0.01 (``scalar_fp='both'``); one Gaussian Hutchinson probe; the three-point
        finite difference in time (clamped, see
        :func:`odesde.fokker_planck.time_derivative`).
        """
        return cls(
            DSMLoss(sde, weighting="likelihood", reduction="half_sum", t_min=1e-5),
            weight=weight,
            scalar_weight=scalar_weight,
            power=2.0,
            fp_weighting="likelihood",
            normalise_by_dim=True,
            divergence_method="hutchinson",
            num_probes=1,
            probe="gaussian",
            time_derivative_method="finite_difference",
        )

    def _fp_weight(self, t: Array) -> Array:
        sde = self.dsm.sde
        if self.fp_weighting == "likelihood":
            return sde.diffusion(t) ** 2
        if self.fp_weighting == "diffusion":
            return sde.diffusion(t)
        if self.fp_weighting == "sigma4":
            return sde.noise_variance(t) ** 2
        return jnp.ones_like(t)

    def _residual_and_scalar(self, model, x, t, key):
        sde = self.dsm.sde
        # One pass gives the bracket (the scalar term) and its x-gradient (for the residual).
        bracket = lambda y: fp.score_fpe_scalar_term(  # noqa: E731
            model, y, t, sde=sde, divergence_method=self.divergence_method, key=key,
            num_probes=self.num_probes, probe=self.probe,
        )
        scalar, grad_bracket = jax.value_and_grad(bracket)(x)
        ds_dt = fp.time_derivative(
            lambda tt: model(x, tt), t, method=self.time_derivative_method
        )
        return ds_dt - grad_bracket, scalar

    def __call__(self, model, x0, key):
        k_pert, k_probe = jax.random.split(key)
        p = self.dsm.perturb(x0, k_pert)
        dsm = self.dsm.dsm(model, p)
        keys = jax.random.split(k_probe, x0.shape[0])
        residual, scalar = jax.vmap(lambda x, t, k: self._residual_and_scalar(model, x, t, k))(
            p.xt, p.t, keys
        )
        d = x0.shape[-1]
        norm_m = jnp.sum(residual**2, -1) ** (0.5 * self.power)
        fp_term = jnp.mean(self._fp_weight(p.t) * norm_m)
        if self.normalise_by_dim:
            fp_term = fp_term / d**self.power
        scalar_term = jnp.linalg.norm(scalar)
        total = dsm + self.weight * fp_term + self.scalar_weight * scalar_term
        return total, {"dsm": dsm, "fp": fp_term, "scalar": scalar_term}


class LogDensityFPLoss(eqx.Module):
    """DSM plus the log-density Fokker–Planck residual of Deveney et al. (digest, Secs. 3-4).

    ``L = L_DSM + weight * mean(R^2)`` with ``R`` the residual of
    :func:`odesde.fokker_planck.log_density_fp_residual` (exact derivatives) at fresh collocation
    points: ``t`` uniform in ``[t_min, T]``, ``x`` uniform in ``[-half_width, half_width]^d``.
    The model needs a ``potential(x, t)`` method (:class:`odesde.nets.PotentialMLP`). With
    ``weight = 0`` the residual is still evaluated and reported (as the paper logs it) but not
    differentiated. ``weight`` is a 0-d array (a traced leaf): all non-zero weights share one
    compiled training step; ``weight = 0`` compiles its own, cheaper one (no gradient of ``R``).

    Terms reported: ``dsm`` and ``fp`` (``mean R^2``).

    Args:
        dsm: the DSM loss.
        weight: ``w_R``.
        num_collocation: ``n_x`` collocation points per step (paper: 50,000; digest D2: 512-1024
            on CPU).
        half_width: half-width of the collocation box (paper: 3.5 for every data set).
        t_min: smallest collocation time (paper: ``1e-5``).
        t_max: largest collocation time; ``None`` for the SDE's ``T``.
    """

    dsm: DSMLoss
    weight: Float[Array, ""] = eqx.field(default=1.0, converter=_weight_array)
    num_collocation: int = eqx.field(default=512, static=True)
    half_width: float = eqx.field(default=3.5, static=True)
    t_min: float = eqx.field(default=1e-5, static=True)
    t_max: float | None = eqx.field(default=None, static=True)
    # Whether the residual enters the gradient: False exactly for a concrete zero weight.
    _fp_gradient: bool = eqx.field(static=True, init=False, repr=False)

    def __post_init__(self):
        self._fp_gradient = _concrete(self.weight) != 0.0

    def __check_init__(self):
        _check_weights("LogDensityFPLoss", weight=self.weight)
        if not isinstance(self.num_collocation, int) or self.num_collocation < 1:
            raise ValueError(
                f"LogDensityFPLoss: num_collocation must be a positive int, got "
                f"{self.num_collocation!r}"
            )
        if not self.half_width > 0:
            raise ValueError(f"LogDensityFPLoss: half_width must be > 0, got {self.half_width}")

    @classmethod
    def deveney(
        cls, weight: float, *, num_collocation: int = 512, sde: SDE | None = None
    ) -> "LogDensityFPLoss":
        """Deveney et al.'s loss: OU, unweighted mean DSM with ``t = 1e-5 + 10 Beta(1, 2)``,
        residual on ``[1e-5, 10] x [-3.5, 3.5]^d`` (digest, Secs. 3-4)."""
        sde = OUSDE() if sde is None else sde
        eps = 1e-5
        dsm = DSMLoss(
            sde, weighting="none", reduction="mean", time_sampling="beta12", t_min=eps,
            t_max=float(sde.T) + eps,
        )
        return cls(dsm, weight=weight, num_collocation=num_collocation, half_width=3.5, t_min=eps)

    def residual(self, model, x0_shape, key) -> Array:
        """``R`` at ``num_collocation`` fresh collocation points, shape ``(num_collocation,)``."""
        sde = self.dsm.sde
        k_t, k_x = jax.random.split(key)
        t_max = float(sde.T) if self.t_max is None else float(self.t_max)
        t = jax.random.uniform(k_t, (self.num_collocation,), minval=self.t_min, maxval=t_max)
        x = jax.random.uniform(
            k_x, (self.num_collocation, x0_shape[-1]), minval=-self.half_width,
            maxval=self.half_width,
        )
        residual = lambda xi, ti: fp.log_density_fp_residual(  # noqa: E731
            model.potential, xi, ti, sde=sde
        )
        return jax.vmap(residual)(x, t)

    def __call__(self, model, x0, key):
        k_dsm, k_col = jax.random.split(key)
        dsm, _ = self.dsm(model, x0, k_dsm)
        fp_term = jnp.mean(self.residual(model, x0.shape, k_col) ** 2)
        if not self._fp_gradient:
            return dsm, {"dsm": dsm, "fp": jax.lax.stop_gradient(fp_term)}
        return dsm + self.weight * fp_term, {"dsm": dsm, "fp": fp_term}


# --------------------------------------------------------------------------------------------
# Optimisers


def make_optimizer(
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    warmup_steps: int = 0,
    grad_clip: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam with optional linear warm-up and global-norm gradient clipping.

    Args:
        learning_rate: a constant or an optax schedule.
        warmup_steps: linear warm-up from 0 over this many steps (score_sde: 5000). With a
            schedule, the warm-up multiplies it.
        grad_clip: clip gradients to this global norm (score_sde: 1); ``None`` for no clipping.
        b1, b2, eps: Adam's parameters (torch and optax defaults).

    Returns:
        An optax gradient transformation. Equal arguments give the same object (the jitted
        training step is keyed on the optimiser, so runs with equal settings share one
        compilation); an unhashable ``learning_rate`` (an array) gives a new one.
    """
    if warmup_steps < 0:
        raise ValueError(f"make_optimizer: warmup_steps must be >= 0, got {warmup_steps}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"make_optimizer: grad_clip must be > 0 or None, got {grad_clip}")
    args = (learning_rate, warmup_steps, grad_clip, b1, b2, eps)
    try:
        hash(args)
    except TypeError:
        return _build_optimizer(*args)
    return _cached_optimizer(*args)


def _build_optimizer(learning_rate, warmup_steps, grad_clip, b1, b2, eps):
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
    if warmup_steps:
        base = schedule
        schedule = lambda step: base(step) * jnp.minimum(1.0, step / warmup_steps)  # noqa: E731
    adam = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    return adam if grad_clip is None else optax.chain(optax.clip_by_global_norm(grad_clip), adam)


# Keyed on the arguments' values (1e-3 == 0.001; a schedule by identity).
_cached_optimizer = functools.lru_cache(maxsize=256)(_build_optimizer)


def deveney_schedule(num_steps: int, learning_rate: float = 1e-3) -> optax.Schedule:
    """Deveney et al.'s three stages (digest, Sec. 4): ``lr`` for 25 % of the steps, ``lr/10``
    for 65 %, ``lr/100`` for 10 %. Deviation (digest D3): one Adam state throughout, whereas the
    code re-creates Adam at each stage. Equal arguments give the same schedule object, hence
    (through :func:`make_optimizer`) the same optimiser and one compiled step."""
    try:
        return _cached_deveney_schedule(num_steps, learning_rate)
    except TypeError:  # unhashable learning rate
        return _build_deveney_schedule(num_steps, learning_rate)


def _build_deveney_schedule(num_steps, learning_rate):
    b1, b2 = int(0.25 * num_steps), int(0.9 * num_steps)
    return optax.piecewise_constant_schedule(learning_rate, {b1: 0.1, b2: 0.1})


_cached_deveney_schedule = functools.lru_cache(maxsize=256)(_build_deveney_schedule)


def lai_optimizer() -> optax.GradientTransformation:
    """score_sde's optimiser inherited by FP-Diffusion (Lai et al. digest, Sec. 2): Adam, lr
    ``2e-4``, 5000 warm-up steps, gradient clip 1 (EMA not included)."""
    return make_optimizer(2e-4, warmup_steps=5000, grad_clip=1.0)


# --------------------------------------------------------------------------------------------
# The step and the loop


def _check_data(data) -> None:
    if not (hasattr(data, "sample") or callable(data)):
        raise TypeError(
            f"data must have a sample(n, *, key) method (an odesde.targets target) or be a "
            f"function (key, n) -> (n, d); got {type(data).__name__}"
        )


@eqx.filter_jit
def _train_step(model, opt_state, key, loss, optimizer, data, batch_size):
    # Module-level and jitted on all its inputs: runs with equal losses, optimisers and data
    # share one compilation.
    k_data, k_loss = jax.random.split(key)
    if hasattr(data, "sample"):
        x0 = data.sample(batch_size, key=k_data)
    else:
        x0 = data(k_data, batch_size)
    (total, terms), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, x0, k_loss)
    params = eqx.filter(model, eqx.is_inexact_array)
    # optax mixes float and int32 (e.g. b1 ** count): allowed only by standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
    model = eqx.apply_updates(model, updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads)))
    return model, opt_state, total, {**terms, "grad_norm": grad_norm}


def make_step(loss, optimizer: optax.GradientTransformation, data, batch_size: int):
    """One jitted training step that draws its own batch.

    Args:
        loss: ``loss(model, x0, key) -> (total, terms)`` (the losses of this module).
        optimizer: optax transformation.
        data: a target with ``sample(n, *, key)`` or a function ``(key, n) -> (n, d)``.
        batch_size: data points per step.

    Returns:
        ``step(model, opt_state, key) -> (model, opt_state, total, terms)``; ``terms`` holds the
        loss terms and ``grad_norm``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"make_step: batch_size must be a positive int, got {batch_size!r}")
    _check_data(data)

    def step(model, opt_state, key):
        return _train_step(model, opt_state, key, loss, optimizer, data, batch_size)

    return step


def compile_step(loss, optimizer: optax.GradientTransformation, data, batch_size: int, model, *,
                 key: PRNGKeyArray | None = None):
    """Compile the step of :func:`make_step` ahead of time, e.g. in a background thread while
    other work runs.

    Compilation is cached: a later step with a loss and data of the same structure (equal static
    fields, arrays of equal shapes), the same optimiser object, the same batch size and a model
    shaped like ``model`` runs without compiling again.

    Args:
        loss, optimizer, data, batch_size: as for :func:`make_step`.
        model: a model of the structure to be trained (its values do not matter).
        key: a key of the kind the training will use; default ``jax.random.key(0)`` (the typed
            keys of :func:`jax.random.key`).

    Returns:
        The compiled step (a ``jax.stages.Compiled``).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"compile_step: batch_size must be a positive int, got {batch_size!r}")
    _check_data(data)
    key = jax.random.key(0) if key is None else key
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return _train_step.lower(model, opt_state, key, loss, optimizer, data, batch_size).compile()


class NonFiniteLossError(FloatingPointError):
    """A training step produced a NaN or inf.

    Attributes:
        step: the index of the failing step.
        term: the first non-finite term (``"loss"``, a loss term, or ``"grad_norm"``).
        value: its value.
        model: the model before the failing step.
    """

    def __init__(self, step: int, term: str, value: float, model=None):
        super().__init__(f"non-finite {term} = {value} at step {step}")
        self.step, self.term, self.value, self.model = step, term, value, model


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained model, optimiser state and history."""

    model: Any
    opt_state: Any
    losses: np.ndarray
    terms: dict[str, np.ndarray]


_CHECKPOINT_FORMAT = "odesde-checkpoint-1"


def _key_data(key) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def save_checkpoint(
    path: str | os.PathLike,
    model,
    opt_state,
    *,
    step: int,
    losses,
    terms: dict[str, Any],
    key: PRNGKeyArray | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    The file holds one JSON header line (format, step, seed key, loss history) followed by the
    model and optimiser state serialised with ``eqx.tree_serialise_leaves``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": _CHECKPOINT_FORMAT,
        "step": int(step),
        "key": None if key is None else _key_data(key),
        "losses": [float(v) for v in losses],
        "terms": {k: [float(v) for v in vs] for k, vs in terms.items()},
    }
    with atomic_open(path) as f:
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(f, (model, opt_state))


def load_checkpoint(path: str | os.PathLike, model_like, opt_state_like):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        model_like: a model of the same structure (e.g. a freshly initialised one).
        opt_state_like: an optimiser state of the same structure (``optimizer.init(...)``).

    Returns:
        ``(model, opt_state, header)``; ``header`` has ``step``, ``key``, ``losses``, ``terms``.
    """
    with open(path, "rb") as f:
        header = json.loads(f.readline())
        if header.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path}: not an odesde checkpoint (format {header.get('format')!r}, expected "
                f"{_CHECKPOINT_FORMAT!r})"
            )
        model, opt_state = eqx.tree_deserialise_leaves(f, (model_like, opt_state_like))
    return model, opt_state, header


def load_model(path: str | os.PathLike, model_like, optimizer: optax.GradientTransformation):
    """The model of a checkpoint (``optimizer`` gives the structure of the stored state)."""
    opt_like = optimizer.init(eqx.filter(model_like, eqx.is_inexact_array))
    return load_checkpoint(path, model_like, opt_like)[0]


def train(
    model,
    loss,
    data,
    *,
    num_steps: int,
    batch_size: int,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` on ``loss`` for ``num_steps`` steps.

    Step ``i`` uses ``jax.random.fold_in(key, i)``. After every step the loss and its terms are
    checked: a NaN or inf raises :class:`NonFiniteLossError` naming the step and the term.
    With ``checkpoint_path``, the state is saved every ``checkpoint_every`` steps and at the end;
    with ``resume`` an existing checkpoint (written with the same ``key``) is continued, giving
    the same loss curve as an uninterrupted run.

    Args:
        model: the initial model (also the structure for loading checkpoints).
        loss: ``loss(model, x0, key) -> (total, terms)``.
        data: a target with ``sample(n, *, key)`` or a function ``(key, n) -> (n, d)``.
        num_steps: total number of steps (including those of a resumed checkpoint).
        batch_size: data points per step.
        key: the run's PRNG key.
        optimizer: optax transformation; default Adam with lr ``1e-3``.
        checkpoint_path: where to save; ``None`` for no checkpoints.
        checkpoint_every: save period in steps; ``None`` for only at the end.
        resume: continue from ``checkpoint_path`` if it exists.
        progress: show a tqdm progress bar.
        description: the progress bar's label.

    Returns:
        A :class:`TrainResult` with the loss and term histories of all ``num_steps`` steps.
    """
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"train: num_steps must be an int >= 0, got {num_steps!r}")
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            f"train: checkpoint_every must be a positive int or None, got {checkpoint_every!r}"
        )
    optimizer = make_optimizer() if optimizer is None else optimizer
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    losses: list[float] = []
    terms: dict[str, list[float]] = {}
    start = 0
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        model, opt_state, header = load_checkpoint(checkpoint_path, model, opt_state)
        if header["key"] != _key_data(key):
            raise ValueError(
                f"train: checkpoint {checkpoint_path} was written with key {header['key']}, this "
                f"run has key {_key_data(key)}; pass resume=False or another checkpoint_path"
            )
        start, losses, terms = header["step"], header["losses"], header["terms"]
        if start > num_steps:
            raise ValueError(
                f"train: checkpoint {checkpoint_path} is at step {start} > num_steps={num_steps}"
            )

    step_fn = make_step(loss, optimizer, data, batch_size)

    def save(step):
        save_checkpoint(
            checkpoint_path, model, opt_state, step=step, losses=losses, terms=terms, key=key
        )

    bar = tqdm(total=num_steps, initial=start, desc=description, disable=not progress)
    try:
        for i in range(start, num_steps):
            new_model, new_opt_state, total, step_terms = step_fn(
                model, opt_state, jax.random.fold_in(key, i)
            )
            total, step_terms = jax.device_get((total, step_terms))
            for name, value in (("loss", total), *step_terms.items()):
                if not np.isfinite(value):
                    raise NonFiniteLossError(i, name, float(value), model)
            model, opt_state = new_model, new_opt_state
            losses.append(float(total))
            for name, value in step_terms.items():
                terms.setdefault(name, []).append(float(value))
            bar.update(1)
            if progress and (i % 50 == 0 or i == num_steps - 1):
                bar.set_postfix(loss=f"{float(total):.4g}")
            if checkpoint_path is not None and checkpoint_every and (i + 1) % checkpoint_every == 0:
                save(i + 1)
    finally:
        bar.close()
    if checkpoint_path is not None:
        save(num_steps)
    return TrainResult(
        model, opt_state, np.asarray(losses), {k: np.asarray(v) for k, v in terms.items()}
    )
