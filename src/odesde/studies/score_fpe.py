"""The score-FPE study of Lai et al. (FP-Diffusion): trained grids of models and their diagnostics.

The chapter ``notebooks/score_fpe.ipynb`` orchestrates these helpers; the maths lives in
:mod:`odesde.fokker_planck` (residual operators), :mod:`odesde.training` (losses, loop,
checkpoints), :mod:`odesde.flow` (probability-flow likelihood) and :mod:`odesde.metrics`
(Jacobian asymmetry). This module adds what the study needs around them:

- targets: :func:`four_gaussians`, the 2-D mixture of the Lai et al. digest's prototype (Sec. 6);
- training: :class:`TrainConfig` and :func:`train_lambda_grid`, which train one DSM base model
  per seed and fine-tune it for every ``lambda`` of a grid (``lambda = 0``: plain DSM for the
  same number of steps), reusing checkpoints whose file names hash every training parameter;
  :class:`LambdaFPLoss`, the FP-regularised loss with ``lambda`` a traced array (one
  compilation for the whole grid);
- sampling and densities in fixed-shape blocks: :func:`draw`, :func:`log_prob`;
- diagnostics at ``x ~ q_t``: :func:`residual_norms`, :func:`residual_on_grid`,
  :func:`asymmetry`, :func:`nll` (probability-flow likelihood), :func:`scalar_term_samples`
  (the official regulariser's scalar term, biased at the true VP score: digest Sec. 3),
  :func:`official_loss_along_scaling` with :class:`ScaledScore` and :func:`parabola_minimum`.
  They evaluate in chunks of :data:`CHUNK` points (a CPU-runtime deadlock, see there);
- estimator checks: :func:`hutchinson_vs_exact` (the library's Hutchinson divergence against
  the exact trace), :func:`finite_difference_errors`;
- :func:`step_seconds`, the measured cost of a training step; :class:`CompileCounter`, the
  number and seconds of XLA compilations of a piece of work.

Compilation dominates the cost of a short run on a CPU, so every helper evaluates in blocks of
one fixed shape (the last block padded by repeating its last row, the padding discarded), with
the times of the points as an array: each (function, dimension) pair compiles once, whatever the
number of points or times.

Conventions: the forward SDE is Song et al.'s VP (``f = -beta/2``, ``g^2 = beta``, beta from 0.1
to 20) unless a function takes another ``sde``; scores are ``score(x: (d,), t) -> (d,)``; all
randomness comes from explicit keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .. import flow, metrics, nets, training
from .. import fokker_planck as fp
from ..sde import SDE
from ..targets import GaussianMixture
from ..utils import provenance

__all__ = [
    "four_gaussians",
    "CompileCounter",
    "chapter_programs",
    "draw",
    "log_prob",
    "optimizer",
    "ScaledScore",
    "parabola_minimum",
    "TrainConfig",
    "LambdaFPLoss",
    "TrainedModel",
    "checkpoint_name",
    "train_lambda_grid",
    "nll",
    "marginal_samples",
    "residual_norms",
    "residual_on_grid",
    "asymmetry",
    "scalar_term_samples",
    "official_loss_along_scaling",
    "hutchinson_vs_exact",
    "finite_difference_errors",
    "step_seconds",
    "mean_and_se",
]

ScoreFn = Callable[[Float[Array, " d"], Any], Float[Array, " d"]]


def four_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Four equal-weight isotropic Gaussians centred at ``(+-radius, 0)`` and ``(0, +-radius)``.

    The 2-D data of the Lai et al. digest's JAX prototype (Sec. 6: means ``+-2`` on the axes,
    std 0.2).
    """
    means = radius * jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    covs = jnp.broadcast_to(std**2 * jnp.eye(2), (4, 2, 2))
    return GaussianMixture(jnp.full(4, 0.25), means, covs)


# --------------------------------------------------------------------------------------------
# Training a lambda grid


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every parameter of one base-plus-fine-tune training (all of them key the checkpoints).

    Base: ``dsm_steps`` of DSM (noise-prediction loss, ``sigma_t^2`` weighting, mean over
    coordinates; ``t ~ U[t_min, 1]``) with Adam at ``lr``. Fine-tune: ``finetune_steps`` more
    steps from the base model with a fresh Adam at ``finetune_lr``, on DSM plus
    ``lambda * mean_b w(t_b) |eps(x_b, t_b)|^2 / d^2`` (the official vector term, ``m = 2``,
    ``fp_weighting`` as in :class:`odesde.training.ScoreFPELoss`; ``lambda = 0``: plain DSM).
    The residual is evaluated at the DSM's perturbed points (``fp_dist='pert'``) with an exact
    time derivative and the ``divergence`` method (``"hutchinson"``: one Gaussian probe, as in
    the official code).
    """

    dim: int
    width: int = 64
    depth: int = 3
    batch_size: int = 128
    dsm_steps: int = 4000
    finetune_steps: int = 1000
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    t_min: float = 1e-3
    fp_weighting: str = "likelihood"
    divergence: str = "exact"

    def dsm_loss(self, sde: SDE) -> training.DSMLoss:
        return training.DSMLoss(sde, weighting="sigma2", reduction="mean", t_min=self.t_min)

    def fp_loss(self, sde: SDE, lam: float) -> "LambdaFPLoss":
        base = training.ScoreFPELoss(
            self.dsm_loss(sde), weight=1.0, scalar_weight=0.0, power=2.0,
            fp_weighting=self.fp_weighting, normalise_by_dim=True,
            divergence_method=self.divergence, num_probes=1, probe="gaussian",
            time_derivative_method="exact",
        )
        return LambdaFPLoss(base, jnp.asarray(lam, dtype=float))

    def init_model(self, sde: SDE, key: PRNGKeyArray) -> nets.ScoreMLP:
        # Jitted: the eager initialisation compiles one random draw per layer shape.
        return _init_model(self, sde, key)

    def official_loss(self, sde: SDE) -> training.ScoreFPELoss:
        """The FP loss with the official code's estimators (one Gaussian Hutchinson probe, the
        three-point finite difference in time), for the cost comparison; weight ``1e-4`` (the
        weights are array leaves: the cost does not depend on them)."""
        return training.ScoreFPELoss(self.dsm_loss(sde), weight=1e-4,
                                     divergence_method="hutchinson",
                                     time_derivative_method="finite_difference")


@eqx.filter_jit
def _init_model(config: TrainConfig, sde: SDE, key: PRNGKeyArray) -> nets.ScoreMLP:
    return nets.ScoreMLP(
        config.dim, key=key, width=config.width, depth=config.depth, parametrisation="noise",
        sde=sde, t_max=float(sde.T),
    )


class LambdaFPLoss(eqx.Module):
    """``dsm + lam * fp`` from a :class:`odesde.training.ScoreFPELoss` with ``weight = 1``.

    ``lam`` is an array leaf, so that a jitted training step compiles once for every value of a
    grid. The core loss's weights are array leaves too; this wrapper differs from
    ``ScoreFPELoss(weight=lam, scalar_weight=0)`` only in leaving the scalar term out of the
    total altogether (no ``0 x`` its gradient to compute). The terms are those of the wrapped
    loss.
    """

    base: training.ScoreFPELoss
    lam: Float[Array, ""]

    def __call__(self, model, x0, key):
        _, terms = self.base(model, x0, key)
        return terms["dsm"] + self.lam * terms["fp"], terms


def checkpoint_name(stage: str, config: TrainConfig, *, seed: int, sde: SDE, target,
                    lam: float | None = None) -> str:
    """A checkpoint file name keyed on every training parameter.

    ``stage`` is ``"base"`` or ``"finetune"``; the name carries the readable essentials and a
    sha256 of (config, seed, lambda, the SDE's and the target's parameters).
    """
    spec = {"stage": stage, "config": dataclasses.asdict(config), "seed": int(seed),
            "lam": None if lam is None else float(lam), "sde": provenance.fingerprint(sde),
            "target": provenance.fingerprint(target), "format": 1}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    lam_text = "" if lam is None else f"-lam{lam:.0e}".replace("+", "")
    return f"score_fpe-{stage}-d{config.dim}-seed{seed}{lam_text}-{digest}.eqx"


class TrainedModel(NamedTuple):
    """A trained model with its loss history and how it was obtained."""

    model: nets.ScoreMLP
    losses: np.ndarray
    terms: dict[str, np.ndarray]
    seconds: float  # wall time spent training in this call (0 when loaded from a checkpoint)
    cached: bool


def _checkpoint_complete(path: Path, num_steps: int) -> bool:
    if not path.exists():
        return False
    with open(path, "rb") as f:
        return json.loads(f.readline()).get("step") == num_steps


def optimizer(lr: float):
    """Adam at ``lr`` (:func:`odesde.training.make_optimizer`, which returns one object per
    learning rate: the jitted training step is keyed on the optimiser, so runs and
    :func:`step_seconds` that share it share one compilation)."""
    return training.make_optimizer(float(lr))


def _train(model, loss, data, config, *, num_steps, key, lr, path, progress, description):
    cached = path is not None and _checkpoint_complete(path, num_steps)
    start = time.perf_counter()
    result = training.train(
        model, loss, data, num_steps=num_steps, batch_size=config.batch_size, key=key,
        optimizer=optimizer(float(lr)), checkpoint_path=path, resume=True,
        progress=progress and not cached, description=description,
    )
    seconds = 0.0 if cached else time.perf_counter() - start
    return TrainedModel(result.model, result.losses, result.terms, seconds, cached)


def train_lambda_grid(
    target,
    sde: SDE,
    config: TrainConfig,
    *,
    lambdas: list[float],
    seeds: list[int],
    model_dir: str | Path | None,
    progress: bool = True,
) -> tuple[dict[int, TrainedModel], dict[tuple[int, float], TrainedModel]]:
    """Train (or load) one DSM base model per seed and its fine-tunes over ``lambdas``.

    Seed ``s`` gives the key ``jax.random.key(s)``, split into the initial parameters, the base
    run and the fine-tune runs (the same fine-tune key for every ``lambda``: the models differ
    only by ``lambda``). Checkpoints go to ``model_dir`` (named by :func:`checkpoint_name`) and
    are reused when complete; ``None`` trains without saving.

    Returns:
        ``(base, finetuned)``: ``base[seed]`` and ``finetuned[(seed, lam)]``.
    """
    if config.dim != target.dim:
        raise ValueError(f"config.dim={config.dim} but the target has dimension {target.dim}")
    folder = None if model_dir is None else Path(model_dir)
    base, tuned = {}, {}
    dsm = config.dsm_loss(sde)
    for seed in seeds:
        k_init, k_base, k_tune = jax.random.split(jax.random.key(seed), 3)
        path = lambda *a, **k: None if folder is None else folder / checkpoint_name(  # noqa: E731
            *a, config=config, seed=seed, sde=sde, target=target, **k)
        base[seed] = _train(
            config.init_model(sde, k_init), dsm, target, config, num_steps=config.dsm_steps,
            key=k_base, lr=config.lr, path=path("base"), progress=progress,
            description=f"d={config.dim} seed {seed}: DSM base",
        )
        for lam in lambdas:
            loss = dsm if lam == 0 else config.fp_loss(sde, lam)
            tuned[(seed, float(lam))] = _train(
                base[seed].model, loss, target, config, num_steps=config.finetune_steps,
                key=k_tune, lr=config.finetune_lr, path=path("finetune", lam=float(lam)),
                progress=progress, description=f"d={config.dim} seed {seed}: λ={lam:g}",
            )
    return base, tuned


# --------------------------------------------------------------------------------------------
# Diagnostics at x ~ q_t


#: Points per jitted call of the evaluation helpers. On this project's CPU runtime (jaxlib
#: 0.10.2, 2 cores) a vmapped 8-D mixture-score residual over 1000 points deadlocked on its
#: second call (every thread idle, the caller blocked on the result); 250 never did.
CHUNK = 250
#: Points per call of :func:`nll`: every point of a call runs until the slowest one's adaptive
#: solve ends, and a small run should not pay for a padded block of :data:`CHUNK` solves.
NLL_CHUNK = 50
#: Samples per call of :func:`draw` and points per call of :func:`log_prob`.
SAMPLE_BLOCK = 1000


class CompileCounter:
    """Counts XLA compilations (and their seconds) while active: ``with CompileCounter() as c:``
    (or ``c = CompileCounter().start()`` ... ``c.stop()``), then ``c.count`` and ``c.seconds``.
    Tracing is not included; a program loaded from a persistent cache is not compiled."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0
        self.names: list[str] = []  # the compiled functions' names, in order

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1
            self.seconds += duration
            self.names.append(str(kwargs.get("fun_name", "?")))

    def start(self) -> "CompileCounter":
        """Start counting (also ``with``)."""
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def stop(self) -> "CompileCounter":
        """Stop counting."""
        from jax._src import monitoring  # no public unregister in jax 0.10

        monitoring.unregister_event_duration_listener(self._listener)
        return self

    def __enter__(self) -> "CompileCounter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _chunked(fn, *arrays, size: int | None = None, pad: bool = True):
    """``fn`` over blocks of ``size`` (default :data:`CHUNK`) rows of ``arrays``, concatenated.

    With ``pad``, every call sees exactly ``size`` rows (the last block is filled up by
    repeating the last row, and the extra outputs are dropped), so ``fn`` compiles once;
    without, the block size is ``min(n, size)`` and a last partial block is padded to it.
    """
    size = CHUNK if size is None else size
    arrays = [np.asarray(a) for a in arrays]  # host slicing: no eager device ops to compile
    n = arrays[0].shape[0]
    if n == 0:
        raise ValueError("no points to evaluate")
    block = size if pad else min(n, size)
    outs = []
    for i in range(0, n, block):
        parts = [a[i:i + block] for a in arrays]
        short = block - parts[0].shape[0]
        if short:
            parts = [np.concatenate([a, np.repeat(a[-1:], short, axis=0)]) for a in parts]
        outs.append(fn(*parts))
    out = jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(v) for v in a]), *outs)
    return jax.tree_util.tree_map(lambda v: v[:n], out)


def _per_point(fn, x, times):
    """``fn(points, point_times)`` at ``x[i, j]`` and ``times[i]`` for ``x`` of shape
    ``(len(times), n, ...)``, in fixed-shape chunks; outputs shaped ``(len(times), n, ...)``."""
    x = np.asarray(x)
    t = np.repeat(np.asarray(times, dtype=float), x.shape[1])
    out = _chunked(fn, x.reshape(-1, *x.shape[2:]), t)
    return jax.tree_util.tree_map(lambda v: v.reshape(x.shape[:2] + v.shape[1:]), out)


def draw(target, n: int, *, key: PRNGKeyArray) -> np.ndarray:
    """``n`` samples of ``target`` in blocks of :data:`SAMPLE_BLOCK` (block ``i`` from
    ``fold_in(key, i)``; the last block truncated): one compilation per target structure and
    dimension, e.g. for a mixture and all its noised marginals, whatever ``n``."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"draw: n must be a positive int, got {n!r}")
    blocks = [np.asarray(target.sample(SAMPLE_BLOCK, key=jax.random.fold_in(key, i)))
              for i in range(-(-n // SAMPLE_BLOCK))]
    return np.concatenate(blocks)[:n]


@eqx.filter_jit
def _log_prob(target, x):
    return target.log_prob(x)


def log_prob(target, x: Array) -> np.ndarray:
    """``target.log_prob`` at the rows of ``x``, jitted in blocks of :data:`SAMPLE_BLOCK`."""
    return _chunked(lambda y: _log_prob(target, y), x, size=SAMPLE_BLOCK)


@eqx.filter_jit
def _nll_block(score, sde, x):
    return flow.negative_log_likelihood(score, sde, x)


def nll(score: ScoreFn, sde: SDE, x: Array) -> np.ndarray:
    """Probability-flow NLL (nats) of each row of ``x``
    (:func:`odesde.flow.negative_log_likelihood`, exact divergence), in chunks of
    ``min(n, NLL_CHUNK)`` rows."""
    return _chunked(lambda y: _nll_block(score, sde, y), x, size=NLL_CHUNK, pad=False)


def marginal_samples(target: GaussianMixture, sde: SDE, times, n: int, *, key) -> np.ndarray:
    """``(len(times), n, d)`` samples of the noised marginals ``q_t`` (one key per time;
    :func:`draw`)."""
    keys = jax.random.split(key, len(times))
    return np.stack([draw(target.marginal(sde, float(t)), n, key=k) for t, k in zip(times, keys)])


@eqx.filter_jit
def _residuals(score, sde, x, t):
    return jax.vmap(lambda xi, ti: fp.score_fpe_residual(score, xi, ti, sde=sde))(x, t)


def residual_norms(score: ScoreFn, sde: SDE, x: Array, times) -> np.ndarray:
    """``|eps(x, t)|`` (exact derivatives) at ``x[i]`` and ``times[i]``: shape ``(len(times), n)``.

    ``x`` is ``(len(times), n, d)``, e.g. from :func:`marginal_samples`.
    """
    r = _per_point(lambda y, t: _residuals(score, sde, y, t), x, times)
    return np.linalg.norm(r, axis=-1)


def residual_on_grid(score: ScoreFn, sde: SDE, t: float, *, half_width: float, n: int):
    """``|eps(x, t)|`` on an ``n x n`` grid of ``[-half_width, half_width]^2``.

    Returns ``(axis, values)`` with ``values[i, j]`` at ``(axis[j], axis[i])`` (``imshow`` order).
    """
    axis = np.linspace(-half_width, half_width, n)
    xx, yy = np.meshgrid(axis, axis)
    pts = np.stack([xx.ravel(), yy.ravel()], -1)
    r = _per_point(lambda y, tt: _residuals(score, sde, y, tt), pts[None], [t])[0]
    return axis, np.linalg.norm(r, axis=-1).reshape(n, n)


@eqx.filter_jit
def _asymmetry(score, x, t):
    return jax.vmap(lambda xi, ti: metrics.jacobian_asymmetry(lambda y: score(y, ti), xi))(x, t)


def asymmetry(score: ScoreFn, x: Array, times) -> np.ndarray:
    """The exact ``||J - J^T||_F / ||J||_F`` at ``x[i]`` and ``times[i]``: ``(len(times), n)``."""
    return _per_point(lambda y, t: _asymmetry(score, y, t), x, times)


@eqx.filter_jit
def _scalar_terms(score, sde, x, t):
    return jax.vmap(lambda xi, ti: fp.score_fpe_scalar_term(score, xi, ti, sde=sde))(x, t)


def scalar_term_samples(score: ScoreFn, sde: SDE, x: Array, times) -> np.ndarray:
    """The official scalar term ``g^2/2 (div s + |s|^2) - f <x, s>`` (exact divergence) at
    ``x[i]``, ``times[i]``: ``(len(times), n)``.

    At the true score it equals ``d_t log q_t + f(t) d``, whose mean over ``q_t`` is
    ``f(t) d`` (``-beta d / 2`` for Song's VP, 0 for VE; digest Sec. 3).
    """
    return _per_point(lambda y, t: _scalar_terms(score, sde, y, t), x, times)


class ScaledScore(eqx.Module):
    """``factor * score(x, t)``: a perturbed score (``factor`` an array, so that every factor
    shares one compilation)."""

    score: Any
    factor: Float[Array, ""]

    def __call__(self, x, t):
        return self.factor * self.score(x, t)


@eqx.filter_jit
def _scaling_terms(true, sde, xt, t, c):
    # Per point: g^2/2 |(c - 1) s|^2, g^2 |eps|^2, the scalar term. Everything is an argument
    # (closed-over arrays would be baked into the program as constants).
    model = ScaledScore(true, c)
    res = jax.vmap(lambda x, tt: fp.score_fpe_residual(model, x, tt, sde=sde))(xt, t)
    scal = jax.vmap(lambda x, tt: fp.score_fpe_scalar_term(model, x, tt, sde=sde))(xt, t)
    s = jax.vmap(true)(xt, t)
    w = jax.vmap(sde.diffusion)(t) ** 2
    return 0.5 * w * jnp.sum(((c - 1) * s) ** 2, -1), w * jnp.sum(res**2, -1), scal


@eqx.filter_jit
def _perturb(dsm, x0, key):
    return dsm.perturb(x0, key)


def official_loss_along_scaling(
    target: GaussianMixture,
    sde: SDE,
    factors,
    *,
    n: int,
    key: PRNGKeyArray,
    batch_size: int = 48,
    weight: float = 0.15,
    scalar_weight: float = 0.01,
) -> dict[str, np.ndarray]:
    """The official FP-Diffusion loss at the scaled true scores ``c s_true``, term by term.

    The loss of :meth:`odesde.training.ScoreFPELoss.lai_official` with exact derivatives (so
    that only the scalar term's own bias shows), at ``n`` perturbed points ``x_t`` drawn once
    (``t ~ U[1e-5, T]``; the same points for every ``c``):

    - ``score_matching``: the likelihood-weighted DSM term in its explicit form
      ``mean g^2 / 2 |c s - s_true|^2``. DSM equals it plus a constant that does not depend on
      the model (Vincent 2011), so its dependence on ``c`` is exact, free of the noise of the
      DSM targets;
    - ``vector``: ``mean g^2 |eps|^2 / d^2``;
    - ``scalar``: ``|| (scalar_b)_{b <= B} ||_2`` for the official batch ``B = batch_size``,
      estimated as ``sqrt(B mean(scalar^2))`` (the root-mean-square norm over batches).

    ``c = 1`` is the true score: it zeroes the first two terms, but not the scalar term.

    Returns:
        ``factors``, ``score_matching``, ``vector``, ``scalar`` and ``total`` (``score_matching
        + weight vector + scalar_weight scalar``), arrays over ``factors``.
    """
    dsm = training.DSMLoss(sde, weighting="likelihood", reduction="half_sum", t_min=1e-5)
    x0 = draw(target, n, key=jax.random.fold_in(key, 0))
    p = _perturb(dsm, x0, jax.random.fold_in(key, 1))
    true = target.score_fn(sde)

    out = {k: [] for k in ("score_matching", "vector", "scalar")}
    for c in factors:
        c = jnp.asarray(float(c))
        sm, vec, scal = _chunked(lambda x, t: _scaling_terms(true, sde, x, t, c), p.xt, p.t)
        d = x0.shape[-1]
        values = (np.mean(sm), np.mean(vec) / d**2, np.sqrt(batch_size * np.mean(scal**2)))
        for name, value in zip(out, values):
            out[name].append(float(value))
    result = {k: np.asarray(v) for k, v in out.items()}
    result["factors"] = np.asarray(factors, dtype=float)
    result["total"] = (result["score_matching"] + weight * result["vector"]
                       + scalar_weight * result["scalar"])
    return result


def parabola_minimum(x, y) -> float:
    """The vertex of the parabola through the grid minimum of ``y`` and its two neighbours
    (the grid minimum itself at an end of the grid)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i = int(np.argmin(y))
    if i == 0 or i == len(y) - 1:
        return float(x[i])
    a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    return float(-b / (2 * a))


# --------------------------------------------------------------------------------------------
# Estimators against exact derivatives


def hutchinson_vs_exact(score: ScoreFn, x: Array, t: float, *, key: PRNGKeyArray,
                        num_probes: int) -> dict[str, np.ndarray]:
    """The library's Hutchinson divergence of ``score(., t)`` at each row of ``x`` against the
    exact divergence.

    The estimate is :func:`odesde.fokker_planck.divergence` itself (``method="hutchinson"``,
    ``num_probes`` Gaussian probes, the official code's probe law), with the key
    ``jax.random.split(key, len(x))[i]`` for row ``i``. The reference does not go through that
    function: the exact divergence is the trace of the forward-mode Jacobian ``J``, and the
    standard error is the closed form for Gaussian probes, ``sqrt(||J + J^T||_F^2 / 2 /
    num_probes)`` (the variance of one probe's ``v^T J v`` is ``2 ||(J + J^T) / 2||_F^2``), so
    it carries no sampling noise of its own.

    Returns ``exact``, ``estimate`` and ``se``, arrays over the rows of ``x``.
    """
    t = jnp.asarray(float(t))

    @eqx.filter_jit
    def one(xi, ki):
        fn = lambda y: score(y, t)  # noqa: E731
        jac = jax.jacfwd(fn)(xi)
        estimate = fp.divergence(fn, xi, method="hutchinson", key=ki, num_probes=num_probes,
                                 probe="gaussian")
        variance = 0.5 * jnp.sum((jac + jac.T) ** 2)
        return jnp.trace(jac), estimate, jnp.sqrt(variance / num_probes)

    keys = jax.random.split(key, x.shape[0])
    exact, est, se = (np.asarray(a) for a in jax.vmap(one)(x, keys))
    return {"exact": exact, "estimate": est, "se": se}


@eqx.filter_jit
def _fd_errors(score, x, t, all_steps):
    exact = jax.vmap(lambda xi: fp.time_derivative(lambda tt: score(xi, tt), t))(x)
    errors = []
    for steps in all_steps:  # static: a tuple of (h_s, h_d) pairs
        approx = jax.vmap(lambda xi: fp.time_derivative(
            lambda tt: score(xi, tt), t, method="finite_difference", steps=steps))(x)
        errors.append(jnp.max(jnp.linalg.norm(approx - exact, axis=-1)
                              / jnp.linalg.norm(exact, axis=-1)))
    return jnp.stack(errors)


def finite_difference_errors(score: ScoreFn, x: Array, t: float, *, scales) -> np.ndarray:
    """Max over ``x`` of the relative error of the official three-point time derivative with
    steps ``scale * FD_STEPS`` against the exact (forward-mode) derivative, for each scale.

    A second-order stencil's error falls by 4 when the steps halve.
    """
    all_steps = tuple((float(c) * fp.FD_STEPS[0], float(c) * fp.FD_STEPS[1]) for c in scales)
    return np.asarray(_fd_errors(score, x, jnp.asarray(float(t)), all_steps))


# --------------------------------------------------------------------------------------------
# Cost and statistics


def step_seconds(loss, model, data, *, batch_size: int, repeats: int, key: PRNGKeyArray,
                 lr: float = 1e-4) -> float:
    """Median wall time of one jitted training step (after a warm-up step, which compiles it
    unless a run with the same loss, optimiser and shapes already did), in seconds."""
    opt = optimizer(float(lr))
    step = training.make_step(loss, opt, data, batch_size)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    out = step(model, state, key)
    jax.block_until_ready(out[2])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        out = step(out[0], out[1], jax.random.fold_in(key, i))
        jax.block_until_ready(out[2])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def chapter_programs(targets: dict, configs: dict, sde: SDE, *, lambdas, n_nll: int,
                     n_scaling: int, key: PRNGKeyArray):
    """The programs of ``notebooks/score_fpe.ipynb`` from its training on, for
    :func:`odesde.utils.background.compile_ahead`: per mixture (``targets[name]`` with ``configs[name]``)

    - the training steps of :func:`train_lambda_grid` (DSM at ``lr``, DSM at ``finetune_lr``
      when it differs, DSM + FP at ``finetune_lr`` if some ``lambda > 0``) and the step of
      :meth:`TrainConfig.official_loss` (at ``finetune_lr``, for :func:`step_seconds`);
    - :func:`residual_norms` / :func:`residual_on_grid` and :func:`asymmetry` of a model;
    - :func:`nll` of a model and of the exact score, on ``n_nll`` points;
    - :func:`scalar_term_samples` of the exact score and :func:`official_loss_along_scaling`
      with ``n = n_scaling``;

    and first the initialisation of the models (:meth:`TrainConfig.init_model`). The arguments
    only give structures and shapes (zeros stand for the parameters: nothing is computed here).
    Returns ``(label, jitted, args)`` triples.
    """
    programs = []
    chunk_t = np.zeros(CHUNK)
    for name in targets:
        programs.append((f"{name}: initialisation", _init_model, (configs[name], sde, key)))
    for name, target in targets.items():
        cfg, d = configs[name], target.dim
        model = jax.tree_util.tree_map(
            lambda v: np.zeros(v.shape, v.dtype) if isinstance(v, jax.ShapeDtypeStruct) else v,
            eqx.filter_eval_shape(cfg.init_model, sde, key))
        steps = [("DSM", cfg.dsm_loss(sde), cfg.lr)]
        if optimizer(cfg.finetune_lr) is not optimizer(cfg.lr):
            steps.append(("DSM fine-tune", cfg.dsm_loss(sde), cfg.finetune_lr))
        if any(float(lam) > 0 for lam in lambdas):
            steps.append(("DSM + FP", cfg.fp_loss(sde, 1.0), cfg.finetune_lr))
        steps.append(("official FP", cfg.official_loss(sde), cfg.finetune_lr))
        for label, loss, lr in steps:
            opt = optimizer(lr)
            state = opt.init(eqx.filter(model, eqx.is_inexact_array))
            programs.append((f"{name}: {label} step", training._train_step,
                             (model, state, key, loss, opt, target, cfg.batch_size)))
        chunk_x = np.zeros((CHUNK, d))
        nll_x = np.zeros((min(n_nll, NLL_CHUNK), d))
        exact = target.score_fn(sde)
        dsm = training.DSMLoss(sde, weighting="likelihood", reduction="half_sum", t_min=1e-5)
        programs += [
            (f"{name}: model residual", _residuals, (model, sde, chunk_x, chunk_t)),
            (f"{name}: model NLL", _nll_block, (model, sde, nll_x)),
            (f"{name}: exact NLL", _nll_block, (exact, sde, nll_x)),
            (f"{name}: model asymmetry", _asymmetry, (model, chunk_x, chunk_t)),
            (f"{name}: scalar term", _scalar_terms, (exact, sde, chunk_x, chunk_t)),
            (f"{name}: perturbation", _perturb, (dsm, np.zeros((n_scaling, d)), key)),
            (f"{name}: scaled scores", _scaling_terms,
             (exact, sde, chunk_x, chunk_t, jnp.asarray(1.0))),
        ]
    return programs


def mean_and_se(values, axis=0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (``std(ddof=1) / sqrt(n)``; 0 for one value) along ``axis``."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, values.std(axis=axis, ddof=1) / math.sqrt(n)
