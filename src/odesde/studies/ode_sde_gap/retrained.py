"""Deveney et al.'s experiment retrained: twelve potential networks, their samplers and gaps.

The chapter ``notebooks/ode_sde_gap.ipynb`` (part 2) orchestrates these helpers; the maths lives
in :mod:`odesde.nets` (the potential network), :mod:`odesde.training` (DSM and the log-density
Fokker–Planck loss, the learning-rate schedule, checkpoints), :mod:`odesde.fokker_planck` (the
residual), :mod:`odesde.samplers` (EM and Euler on the paper's grid) and :mod:`odesde.metrics`
(binning and exact grid ``W2^2``). This module adds what the study needs around them
(digest = ``deveney_ode_sde_gap.md``):

- :class:`StudyConfig`: every training parameter, with the paper's values as defaults
  (:meth:`StudyConfig.faithful`) and :meth:`StudyConfig.deviations` listing what a profile
  changes (digest Sec. 9, D1-D3);
- :func:`train_study`: all models of a study (data sets x ``w_R``) trained in **one** compiled
  program, ``lax.map`` over the stacked models inside a ``lax.scan`` over a chunk of steps;
  common random numbers across ``w_R`` (the same data, times, noise and collocation points
  every step; digest D5), each model from its own initialisation. Checkpointed under a
  file name that hashes every training parameter and reused when complete (the mechanism of
  :mod:`odesde.studies.score_fpe`);
- :func:`sample_pair`: the paper's reverse-SDE (EM, last step drift-only) and probability-flow
  (Euler) samplers on the 890-evaluation grid with the fine tail, from common initial points;
- :func:`evaluate_model`: binned exact ``W2^2`` (ODE–SDE, ODE–truth, SDE–truth; digest Sec. 6),
  the mean squared residual over the collocation box (the paper's ``R~``), the gauge-free
  residual (the variance over ``x`` at fixed ``t``, averaged over ``t``; digest D7), and the DSM
  loss with common random numbers (F4);
- :func:`exact_residual`: the residual operator at the exact noised log-density of a data set
  (zero up to round-off).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm import tqdm

from ... import fokker_planck as fp
from ... import metrics, nets, samplers, targets, training
from ...sde import OUSDE
from ...utils import provenance

__all__ = [
    "DATASETS",
    "WEIGHTS",
    "LABELS",
    "make_target",
    "StudyConfig",
    "WeightedDeveneyLoss",
    "Float32Potential",
    "init_models",
    "TrainedStudy",
    "checkpoint_name",
    "train_study",
    "model_at",
    "sample_pair",
    "truth_histogram",
    "residual_metrics",
    "dsm_value",
    "normalised",
    "ModelEvaluation",
    "evaluate_model",
    "exact_residual",
    "step_seconds",
]

DATASETS: tuple[str, ...] = ("blob", "circles2", "checker")
WEIGHTS: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0)
LABELS = {"blob": "Mixture", "circles2": "Circles", "checker": "Checkerboard"}
SDE = OUSDE()
EPS = 1e-5
HALF_WIDTH = 3.5


def make_target(name: str):
    """The data set ``name`` (``"blob"``, ``"circles2"`` or ``"checker"``; digest Sec. 5)."""
    makers = {"blob": targets.blob, "circles2": targets.circles2, "checker": targets.checker}
    if name not in makers:
        raise ValueError(f"dataset={name!r} is not one of Deveney et al.'s: allowed are {DATASETS}")
    return makers[name]()


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Every parameter of the training (all of them key the checkpoints).

    The defaults are the paper's (digest Secs. 2-4): Softplus ``beta = 100``, 3 x 80 hidden
    layers, DSM batches of 200,000, 50,000 collocation points, 100,000 Adam steps with the
    25/65/10 % learning-rate stages from ``1e-3``.
    """

    beta: float = 100.0
    width: int = 80
    depth: int = 3
    batch_size: int = 200_000
    num_collocation: int = 50_000
    num_steps: int = 100_000
    lr: float = 1e-3
    precision: str = "float32"

    def __post_init__(self):
        if self.precision not in ("float32", "float64"):
            raise ValueError(
                f"StudyConfig: precision={self.precision!r}: allowed are 'float32' (the paper's "
                "PyTorch code) and 'float64'")
        for name in ("width", "depth", "batch_size", "num_collocation", "num_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"StudyConfig: {name}={value!r} must be a positive int")
        for name in ("beta", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"StudyConfig: {name}={value!r} must be a positive number")

    @classmethod
    def faithful(cls) -> "StudyConfig":
        """The paper's configuration."""
        return cls()

    def deviations(self) -> list[str]:
        """One line per parameter that differs from the paper's value, with the digest's label."""
        paper = StudyConfig.faithful()
        labels = {"beta": "D1", "batch_size": "D2", "num_collocation": "D2", "num_steps": "D3",
                  "width": "architecture", "depth": "architecture", "lr": "optimiser",
                  "precision": "arithmetic"}
        return [
            f"{labels[f.name]}: {f.name} = {getattr(self, f.name)} "
            f"(paper: {getattr(paper, f.name)})"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(paper, f.name)
        ]

    def optimizer(self):
        """Adam with :func:`odesde.training.deveney_schedule` (one Adam state; digest D3)."""
        return training.make_optimizer(training.deveney_schedule(self.num_steps, self.lr))

    def base_loss(self) -> training.LogDensityFPLoss:
        """:meth:`odesde.training.LogDensityFPLoss.deveney` with this many collocation points
        (its static weight is unused: :class:`WeightedDeveneyLoss` carries ``w_R``)."""
        return training.LogDensityFPLoss.deveney(1.0, num_collocation=self.num_collocation,
                                                 sde=SDE)


class Float32Potential(eqx.Module):
    """A :class:`odesde.nets.PotentialMLP` evaluated in float32 (the paper's PyTorch arithmetic).

    The parameters stay float64 (the optimiser's master copy); the forward pass casts them and
    the inputs to float32, runs the same layers and :func:`odesde.nets.softplus` as
    :meth:`odesde.nets.PotentialMLP.potential` (time first), and returns ``phi`` as float64,
    so gradients reach the float64 parameters and every computation around the network stays
    float64. On this project's 2-core CPU it is 2-3x faster than float64 (the Softplus's
    ``exp`` and ``log`` dominate). Calling it returns the score ``grad_x phi``.
    """

    model: nets.PotentialMLP

    def potential(self, x, t):
        f32 = jnp.float32
        z = jnp.concatenate([jnp.asarray(t).astype(f32)[None], jnp.asarray(x).astype(f32)])
        layers = self.model.layers
        for layer in layers[:-1]:
            z = nets.softplus(layer.weight.astype(f32) @ z + layer.bias.astype(f32),
                              self.model.beta, self.model.threshold)
        out = layers[-1].weight.astype(f32) @ z + layers[-1].bias.astype(f32)
        return out[0].astype(float)

    def __call__(self, x, t):
        return jax.grad(self.potential)(jnp.asarray(x, dtype=float), t)


def network(model, precision: str):
    """``model`` as evaluated under ``precision`` (``"float32"``: :class:`Float32Potential`)."""
    return Float32Potential(model) if precision == "float32" else model


class WeightedDeveneyLoss(eqx.Module):
    """``DSM + w_R mean(R^2)`` with ``w_R`` an array leaf (one compiled program for every weight).

    The same random draws as :class:`odesde.training.LogDensityFPLoss` (the key split into the
    DSM's and the collocation points'); terms ``dsm`` and ``fp`` (``mean R^2``). At ``w_R = 0``
    the residual's gradient is multiplied by 0: it is logged, not trained (as in the paper).
    """

    base: training.LogDensityFPLoss
    weight: Float[Array, ""]

    def __call__(self, model, x0, key):
        k_dsm, k_col = jax.random.split(key)
        dsm, _ = self.base.dsm(model, x0, k_dsm)
        fp_term = jnp.mean(self.base.residual(model, x0.shape, k_col) ** 2)
        return dsm + self.weight * fp_term, {"dsm": dsm, "fp": fp_term}


def init_models(config: StudyConfig, shape: tuple[int, ...], *, key: PRNGKeyArray):
    """Stacked :class:`odesde.nets.PotentialMLP` s, one per entry of ``shape`` (leading axes),
    each from its own key."""
    keys = jax.random.split(key, int(np.prod(shape))).reshape(shape)
    make = lambda k: nets.PotentialMLP(  # noqa: E731
        2, key=k, width=config.width, depth=config.depth, beta=config.beta)
    for _ in shape:
        make = eqx.filter_vmap(make)
    return make(keys)


def model_at(models, *index: int):
    """The single model at ``index`` of stacked models."""
    arrays, static = eqx.partition(models, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(lambda a: a[index], arrays), static)


# --------------------------------------------------------------------------------------------
# Training


def checkpoint_name(config: StudyConfig, *, datasets, weights, seed: int) -> str:
    """A file name hashing every training parameter (config, data sets and their parameters,
    weights, seed)."""
    spec = {"config": dataclasses.asdict(config), "datasets": list(datasets),
            "targets": [provenance.fingerprint(make_target(d)) for d in datasets],
            "weights": [float(w) for w in weights], "seed": int(seed), "format": 1}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return (f"ode_sde_gap-{'-'.join(datasets)}-{len(weights)}w-{config.num_steps}steps-"
            f"{digest}.eqx")


class TrainedStudy(NamedTuple):
    """Trained models (stacked, axes ``(dataset, weight)``) and their per-step histories."""

    models: Any
    datasets: tuple[str, ...]
    weights: tuple[float, ...]
    history: dict[str, np.ndarray]  # "loss", "dsm", "fp": (n_datasets, n_weights, num_steps)
    seconds: float  # training wall time in this call (0 when loaded)
    cached: bool
    path: Path | None

    def model(self, dataset: str, weight: float):
        return model_at(self.models, self.datasets.index(dataset),
                        [float(w) for w in self.weights].index(float(weight)))


@eqx.filter_jit
def _train_chunk(models, opt_states, weights, key, steps, loss_base, optimizer, data,
                 batch_size, precision):
    """``len(steps)`` steps of every model: ``models`` stacked ``(D, W)``; step ``i`` uses
    ``fold_in(key, i)`` for the data (one draw per data set) and the loss's draws (shared by
    every model of the step: common random numbers).

    The models of a step run one after the other (``lax.map``) inside one compiled program:
    on a 2-core CPU a ``vmap`` over models (batched matrix products) measured 1.6x slower per
    model than this.
    """
    n_d, n_w = len(data), weights.shape[0]
    arrays, static = eqx.partition(models, eqx.is_array)
    flat = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: a.reshape((n_d * n_w,) + a.shape[2:]), tree)
    unflat = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: a.reshape((n_d, n_w) + a.shape[1:]), tree)
    w_flat = jnp.tile(weights, n_d)
    d_flat = jnp.repeat(jnp.arange(n_d), n_w)

    def per_model(model_arrays, opt_state, weight, x0, k_loss):
        model = eqx.combine(model_arrays, static)
        loss = WeightedDeveneyLoss(loss_base, weight)
        wrapped = lambda m, x, k: loss(network(m, precision), x, k)  # noqa: E731
        (total, terms), grads = eqx.filter_value_and_grad(wrapped, has_aux=True)(model, x0, k_loss)
        params = eqx.filter(model, eqx.is_inexact_array)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes float and int32
            updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return (eqx.filter(model, eqx.is_array), opt_state,
                jnp.stack([total, terms["dsm"], terms["fp"]]))

    def one(carry, i):
        model_arrays, opt_states = carry
        k_data, k_loss = jax.random.split(jax.random.fold_in(key, i))
        x0 = jnp.stack([d.sample(batch_size, key=jax.random.fold_in(k_data, j))
                        for j, d in enumerate(data)])
        model_arrays, opt_states, terms = jax.lax.map(
            lambda a: per_model(a[0], a[1], a[2], x0[a[3]], k_loss),
            (model_arrays, opt_states, w_flat, d_flat))
        return (model_arrays, opt_states), terms.T.reshape(3, n_d, n_w)

    (arrays, opt_states), hist = lax.scan(one, (flat(arrays), flat(opt_states)), steps)
    return eqx.combine(unflat(arrays), static), unflat(opt_states), hist  # hist: (n, 3, D, W)


_TERMS = ("loss", "dsm", "fp")


def _history_header(history: np.ndarray, datasets, weights) -> dict[str, list[float]]:
    return {f"{name}|{d}|{w:g}": history[k, i, j].tolist()
            for k, name in enumerate(_TERMS) for i, d in enumerate(datasets)
            for j, w in enumerate(weights)}


def _history_from_header(terms, datasets, weights, steps) -> np.ndarray:
    out = np.zeros((3, len(datasets), len(weights), steps))
    for k, name in enumerate(_TERMS):
        for i, d in enumerate(datasets):
            for j, w in enumerate(weights):
                out[k, i, j] = terms[f"{name}|{d}|{w:g}"][:steps]
    return out


def train_study(
    config: StudyConfig,
    *,
    datasets=DATASETS,
    weights=WEIGHTS,
    seed: int,
    model_dir: str | Path | None,
    chunk: int = 100,
    checkpoint_every: int = 2000,
    progress: bool = True,
) -> TrainedStudy:
    """Train (or load) one potential network per data set and ``w_R``, all in one program.

    Seed ``s`` gives ``jax.random.key(s)``, split into the initial parameters (one key per
    model) and the run (data, times, noise and collocation points, shared by the models of a
    data set at every step). Checkpoints (stacked models, Adam states, histories) go to
    ``model_dir`` under :func:`checkpoint_name` every ``checkpoint_every`` steps and at the end; a
    complete one is loaded instead of training, an incomplete one is resumed (the same
    histories as an uninterrupted run). ``None`` trains without saving.

    Args:
        config: the training parameters.
        datasets: names from :data:`DATASETS`.
        weights: the ``w_R`` values (``>= 0``).
        seed: the run's seed.
        model_dir: checkpoint folder, or ``None``.
        chunk: steps per compiled call (a ``lax.scan``); the progress bar moves per chunk.
        checkpoint_every: save period in steps (rounded up to whole chunks).
        progress: show a tqdm bar.

    Returns:
        A :class:`TrainedStudy`.

    Raises:
        odesde.training.NonFiniteLossError: a loss term became NaN or inf; names the step, the
            data set and ``w_R``.
    """
    datasets = tuple(datasets)
    weights = tuple(float(w) for w in weights)
    if not datasets:
        raise ValueError("train_study: datasets is empty: give at least one of " + str(DATASETS))
    for d in datasets:
        make_target(d)
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"train_study: datasets={datasets} has repeated names")
    if not weights or any(not (np.isfinite(w) and w >= 0) for w in weights):
        raise ValueError(f"train_study: weights={weights} must be a non-empty list of w_R >= 0")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"train_study: chunk={chunk!r} must be a positive int")
    n = config.num_steps
    chunk = min(chunk, n)
    k_init, k_run = jax.random.split(jax.random.key(seed))
    models = init_models(config, (len(datasets), len(weights)), key=k_init)
    optimizer = config.optimizer()
    opt_states = eqx.filter_vmap(eqx.filter_vmap(
        lambda m: optimizer.init(eqx.filter(m, eqx.is_inexact_array))))(models)
    path = None if model_dir is None else Path(model_dir) / checkpoint_name(
        config, datasets=datasets, weights=weights, seed=seed)
    history = np.zeros((3, len(datasets), len(weights), n))
    start = 0
    if path is not None and path.exists():
        models, opt_states, header = training.load_checkpoint(path, models, opt_states)
        if header["key"] != training._key_data(k_run):
            raise ValueError(f"train_study: checkpoint {path} was written with another key")
        start = int(header["step"])
        if start > n:
            raise ValueError(f"train_study: checkpoint {path} is at step {start} > num_steps={n}")
        history[..., :start] = _history_from_header(header["terms"], datasets, weights, start)
    cached = start == n
    data = tuple(make_target(d) for d in datasets)
    loss_base = config.base_loss()
    w = jnp.asarray(weights, dtype=float)

    def save(step):
        if path is not None:
            training.save_checkpoint(
                path, models, opt_states, step=step, losses=[],
                terms=_history_header(history[..., :step], datasets, weights), key=k_run)

    began = time.perf_counter()
    bar = tqdm(total=n, initial=start, disable=not progress or cached,
               desc=f"training {len(datasets) * len(weights)} potential networks")
    last_save = start
    try:
        i = start
        while i < n:
            m = min(chunk, n - i)
            new_models, new_opt, hist = _train_chunk(
                models, opt_states, w, k_run, jnp.arange(i, i + m), loss_base, optimizer, data,
                config.batch_size, config.precision)
            hist = np.asarray(hist)  # (m, 3, D, W)
            if not np.all(np.isfinite(hist)):
                s, k, a, b = np.argwhere(~np.isfinite(hist))[0]
                raise training.NonFiniteLossError(
                    int(i + s), f"{_TERMS[k]} ({datasets[a]}, w_R={weights[b]:g})",
                    float(hist[s, k, a, b]), models)
            models, opt_states = new_models, new_opt
            history[..., i:i + m] = np.moveaxis(hist, 0, -1)
            i += m
            bar.update(m)
            bar.set_postfix(dsm=f"{hist[-1, 1].mean():.3g}", fp=f"{hist[-1, 2].min():.2g}")
            if i - last_save >= checkpoint_every and i < n:
                save(i)
                last_save = i
    finally:
        bar.close()
    if not cached:
        save(n)
    seconds = 0.0 if cached else time.perf_counter() - began
    hist = {name: history[k] for k, name in enumerate(_TERMS)}
    return TrainedStudy(models, datasets, weights, hist, seconds, cached, path)


def step_seconds(config: StudyConfig, *, weights=(0.0,), datasets=("checker",), steps: int = 20,
                 with_residual: bool = True, seed: int = 0, repeats: int = 3) -> float:
    """Measured seconds per training step (after compilation) of ``len(datasets) x
    len(weights)`` models trained together, the fastest of ``repeats`` timed runs of ``steps``
    steps (the least disturbed by other work on the machine); ``with_residual=False`` times
    plain DSM (the collocation points are then not drawn: ``num_collocation`` is ignored)."""
    models = init_models(config, (len(datasets), len(weights)), key=jax.random.key(seed))
    optimizer = config.optimizer()
    opt_states = eqx.filter_vmap(eqx.filter_vmap(
        lambda m: optimizer.init(eqx.filter(m, eqx.is_inexact_array))))(models)
    data = tuple(make_target(d) for d in datasets)
    base = config.base_loss()
    if not with_residual:
        base = _DSMOnly(base)
    w = jnp.asarray(weights, dtype=float)
    key = jax.random.key(seed)
    out = _train_chunk(models, opt_states, w, key, jnp.arange(steps), base, optimizer, data,
                       config.batch_size, config.precision)
    jax.block_until_ready(out)
    best = math.inf
    for r in range(1, max(int(repeats), 1) + 1):
        began = time.perf_counter()
        out = _train_chunk(models, opt_states, w, key, jnp.arange(r * steps, (r + 1) * steps),
                           base, optimizer, data, config.batch_size, config.precision)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - began)
    return best / steps


class _DSMOnly(eqx.Module):
    """A stand-in for the base loss whose residual is zero and costs nothing (timings only)."""

    inner: training.LogDensityFPLoss

    @property
    def dsm(self):
        return self.inner.dsm

    def residual(self, model, x0_shape, key):
        return jnp.zeros(())


# --------------------------------------------------------------------------------------------
# Sampling and evaluation


@eqx.filter_jit
def _score_fn(model, x, t):
    return model(x, t)


def sample_pair(model, *, n: int, key: PRNGKeyArray, batch: int = 50_000,
                times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of the paper's reverse SDE (EM, last step drift-only) and probability-flow
    ODE (Euler) of ``model``, from the same ``N(0, I/2)`` initial points (digest Sec. 6).

    Args:
        model: a potential network (called as the score).
        n: number of samples per sampler.
        key: PRNG key (initial points and EM noise).
        batch: samples per sampler call.
        times: the grid; default :func:`odesde.samplers.deveney_time_grid`.

    Returns:
        ``(sde_samples, ode_samples)``, each ``(n, 2)``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"sample_pair: n={n!r} must be a positive int")
    times = samplers.deveney_time_grid() if times is None else times
    k_init, k_noise = jax.random.split(key)
    x_T = jnp.sqrt(SDE.prior_variance) * jax.random.normal(k_init, (n, 2), dtype=float)
    out_s, out_o = [], []
    for b, i in enumerate(range(0, n, batch)):
        xb = x_T[i:i + batch]
        out_s.append(np.asarray(samplers.sample_on_grid(
            SDE, model, "em", times=times, key=jax.random.fold_in(k_noise, b), x_T=xb,
            last_noise=False)))
        out_o.append(np.asarray(samplers.sample_on_grid(SDE, model, "euler", times=times, x_T=xb)))
    return np.concatenate(out_s), np.concatenate(out_o)


def truth_histogram(dataset: str, n: int, *, key: PRNGKeyArray) -> np.ndarray:
    """The data's histogram on the 64 x 64 grid: ``n`` samples, not truncated (outliers snap to
    edge nodes, as in the paper's truth files; digest Sec. 6)."""
    x = np.asarray(_sample(make_target(dataset), n, key))
    return metrics.bin_to_grid(x, truncate=False)


@eqx.filter_jit
def _sample(target, n, key):
    return target.sample(n, key=key)


@eqx.filter_jit
def _residual_matrix(model, x, t):
    # x: (n_t, n_x, 2), t: (n_t,)
    one = lambda xi, ti: fp.log_density_fp_residual(model.potential, xi, ti, sde=SDE)  # noqa: E731
    return jax.vmap(lambda xs, ti: jax.vmap(lambda xi: one(xi, ti))(xs))(x, t)


def residual_metrics(model, *, key: PRNGKeyArray, n_times: int = 64, n_points: int = 512):
    """The paper's residual metric and the gauge-free one, on the collocation law.

    ``t_j = eps + (T - eps)(j + u_j) / n_times`` (stratified uniform), ``n_points`` points uniform
    in ``[-3.5, 3.5]^2`` at each time; ``R`` by
    :func:`odesde.fokker_planck.log_density_fp_residual`.

    Returns:
        ``(mean R^2, mean_t var_x R)``: the first contains the gauge part ``c'(t)``, the second
        not (digest Sec. 3, D7).
    """
    k_t, k_x = jax.random.split(key)
    T = float(SDE.T)
    u = jax.random.uniform(k_t, (n_times,))
    t = EPS + (T - EPS) * (jnp.arange(n_times, dtype=float) + u) / n_times
    x = jax.random.uniform(k_x, (n_times, n_points, 2), minval=-HALF_WIDTH, maxval=HALF_WIDTH)
    r = np.concatenate([np.asarray(_residual_matrix(model, x[i:i + 8], t[i:i + 8]))
                        for i in range(0, n_times, 8)])
    return float(np.mean(r**2)), float(np.mean(np.var(r, axis=1)))


@eqx.filter_jit
def _dsm(loss, model, x0, key):
    return loss.dsm(model, x0, key)[0]


def dsm_value(model, dataset: str, *, key: PRNGKeyArray, n: int = 50_000) -> float:
    """The paper's DSM loss of ``model`` on ``n`` fresh data points, times and noises drawn from
    ``key``: the same draws for every model given the same key (common random numbers, F4)."""
    k_data, k_loss = jax.random.split(key)
    x0 = _sample(make_target(dataset), n, k_data)
    return float(_dsm(StudyConfig().base_loss(), model, x0, k_loss))


def normalised(values) -> np.ndarray:
    """Min–max normalisation minus 0.5 (digest F4): ``(v - min) / (max - min) - 0.5``."""
    v = np.asarray(values, dtype=float)
    span = v.max() - v.min()
    return (v - v.min()) / span - 0.5 if span > 0 else np.zeros_like(v)


class ModelEvaluation(NamedTuple):
    """One model's samples' histograms and its metrics."""

    hist_sde: np.ndarray
    hist_ode: np.ndarray
    w2_ode_sde: float
    w2_ode_truth: float
    w2_sde_truth: float
    mean_r2: float
    gauge_free_r2: float
    dsm: float
    dropped_sde: float  # fraction of samples outside the box
    dropped_ode: float
    seconds: dict[str, float]


def evaluate_model(model, dataset: str, truth: np.ndarray, *, n_samples: int, key: PRNGKeyArray,
                   dsm_key: PRNGKeyArray, residual_key: PRNGKeyArray, batch: int = 50_000,
                   n_dsm: int = 50_000, residual_times: int = 64,
                   residual_points: int = 512) -> ModelEvaluation:
    """Sample, bin and measure one model (digest Sec. 6): truncated model samples, exact grid
    ``W2^2`` against each other and against ``truth``; the residual metrics; DSM with the given
    (common) key."""
    seconds = {}
    began = time.perf_counter()
    xs, xo = sample_pair(model, n=n_samples, key=key, batch=batch)
    seconds["sampling"] = time.perf_counter() - began
    began = time.perf_counter()
    hs, ho = metrics.bin_to_grid(xs), metrics.bin_to_grid(xo)
    w_os = metrics.grid_w2_squared(ho, hs)
    w_ot = metrics.grid_w2_squared(ho, truth)
    w_st = metrics.grid_w2_squared(hs, truth)
    seconds["W2"] = time.perf_counter() - began
    began = time.perf_counter()
    r2, gauge_free = residual_metrics(model, key=residual_key, n_times=residual_times,
                                      n_points=residual_points)
    dsm = dsm_value(model, dataset, key=dsm_key, n=n_dsm)
    seconds["residual and DSM"] = time.perf_counter() - began
    outside = lambda x: float(np.mean(~np.all(np.abs(x) < HALF_WIDTH, axis=1)))  # noqa: E731
    return ModelEvaluation(hs, ho, w_os, w_ot, w_st, r2, gauge_free, dsm, outside(xs),
                           outside(xo), seconds)


def exact_residual(dataset: str, *, key: PRNGKeyArray, n: int = 256) -> tuple[float, float]:
    """The residual operator at the exact noised log-density ``log p_t`` of a data set.

    ``n`` points ``x ~ U[-3.5, 3.5]^2`` and times ``t ~ U[0.01, 10]``; ``log p_t`` from the
    target's closed form (Mixture and Checkerboard; Circles has none).

    Returns:
        ``(max |R|, max |d_t log p_t|)``: the residual and the scale of its largest term.
    """
    target = make_target(dataset)
    if not hasattr(target, "marginal_log_prob"):
        raise ValueError(f"exact_residual: {dataset!r} has no closed-form noised density")
    k_x, k_t = jax.random.split(key)
    x = jax.random.uniform(k_x, (n, 2), minval=-HALF_WIDTH, maxval=HALF_WIDTH)
    t = jax.random.uniform(k_t, (n,), minval=0.01, maxval=10.0)
    r, dt = _exact_residual(target, x, t)
    return float(jnp.max(jnp.abs(r))), float(jnp.max(jnp.abs(dt)))


@eqx.filter_jit
def _exact_residual(target, x, t):
    potential = lambda y, s: target.marginal_log_prob(y, s, sde=SDE)  # noqa: E731
    r = jax.vmap(lambda y, s: fp.log_density_fp_residual(potential, y, s, sde=SDE))(x, t)
    dt = jax.vmap(lambda y, s: jax.jvp(lambda u: potential(y, u), (s,), (jnp.ones_like(s),))[1])(
        x, t)
    return r, dt
