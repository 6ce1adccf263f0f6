"""The probability-flow ODE, solved adaptively with diffrax: sampling and likelihood.

For a forward SDE ``dx = f(t) x dt + g(t) dw`` and a score ``s(x, t)``, the probability-flow ODE
``dx/dt = v(x, t) = f(t) x - g(t)^2 s(x, t) / 2`` (Song et al. 2021) transports the prior at ``T``
to the data at ``t ~ 0``. Along its trajectories ``d/dt log p_t(x_t) = -div v``, so
(instantaneous change of variables; Chen et al. 2018; Song et al. 2021, Sec. D.2)

    log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,   div v = f(t) d - g^2 div s / 2.

The adaptive solvers (Tsit5 or Dopri5 with a PID step-size controller) are those of diffrax.
Score-SDE's likelihood code used RK45 with ``rtol = atol = 1e-5`` and ``eps = 1e-5`` (Lai et al.
digest, Sec. 5), the defaults here.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .fokker_planck import DivergenceMethod, Probe, hutchinson_probes
from .sde import SDE

Scalar = Float[ArrayLike, ""]
ScoreFn = Callable[[Float[Array, " d"], Scalar], Float[Array, " d"]]

__all__ = ["velocity", "solve", "sample", "log_likelihood", "negative_log_likelihood"]

_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}


def _solver(name: str):
    if name not in _SOLVERS:
        raise ValueError(f"solver={name!r}: allowed are {', '.join(map(repr, _SOLVERS))}")
    return _SOLVERS[name]()


def velocity(score: ScoreFn, sde: SDE, x: Float[Array, " d"], t: Scalar) -> Float[Array, " d"]:
    """The probability-flow velocity ``f(t) x - g(t)^2 s(x, t) / 2`` at one point."""
    return sde.probability_flow_drift(x, t, score(x, t))


def _check_times(t0, t1, sde):
    if not (0 <= min(t0, t1) and max(t0, t1) <= sde.T and t0 != t1):
        raise ValueError(
            f"times must be distinct and in [0, T={sde.T}], got t0={t0}, t1={t1}"
        )


@eqx.filter_jit
def _solve(score, sde, x, t0, t1, solver, rtol, atol, max_steps):
    term = diffrax.ODETerm(lambda t, y, args: velocity(score, sde, y, t))
    sol = diffrax.diffeqsolve(
        term, _solver(solver), t0, t1, None, x,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
    )
    return sol.ys[-1], sol.stats["num_steps"]


def solve(
    score: ScoreFn,
    sde: SDE,
    x: Float[Array, "n d"],
    *,
    t0: float,
    t1: float,
    solver: Literal["tsit5", "dopri5"] = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> Float[Array, "n d"]:
    """Transport points from time ``t0`` to ``t1`` along the probability-flow ODE.

    Each point gets its own adaptive step sequence (the solve is vmapped).

    Args:
        score: ``(x: (d,), t) -> (d,)``.
        sde: the forward SDE.
        x: ``(n, d)`` points at time ``t0``.
        t0: start time (``T`` to sample).
        t1: end time.
        solver: ``"tsit5"`` or ``"dopri5"``.
        rtol, atol: tolerances of the PID controller.
        max_steps: step budget per point.

    Returns:
        ``(n, d)`` points at time ``t1``.
    """
    _check_times(t0, t1, sde)
    # Times and tolerances as arrays: new values reuse the compiled solver.
    t0, t1, rtol, atol = (jnp.asarray(v, dtype=float) for v in (t0, t1, rtol, atol))
    ys, _ = jax.vmap(lambda xi: _solve(score, sde, xi, t0, t1, solver, rtol, atol, max_steps))(x)
    return ys


def sample(
    score: ScoreFn,
    sde: SDE,
    n: int,
    dim: int,
    *,
    key: PRNGKeyArray,
    t_end: float = 1e-3,
    solver: Literal["tsit5", "dopri5"] = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> Float[Array, "n dim"]:
    """Samples from the probability-flow ODE started at the SDE's Gaussian prior at ``T``.

    Args:
        score: ``(x: (d,), t) -> (d,)``.
        sde: the forward SDE (prior ``N(0, prior_variance I)``).
        n: number of samples.
        dim: their dimension.
        key: PRNG key for the prior draws.
        t_end: where the flow stops (Song et al.: ``1e-3`` for VP).
        solver, rtol, atol, max_steps: see :func:`solve`.

    Returns:
        ``(n, dim)`` samples.
    """
    x_T = math.sqrt(sde.prior_variance) * jax.random.normal(key, (n, dim))
    return solve(
        score, sde, x_T, t0=float(sde.T), t1=t_end, solver=solver, rtol=rtol, atol=atol,
        max_steps=max_steps,
    )


@eqx.filter_jit
def _log_likelihood(score, sde, x, probes, t_start, solver, rtol, atol, max_steps, prior):
    d = x.shape[-1]

    def vector_field(t, y, args):
        xt, _ = y
        v_x = lambda z: velocity(score, sde, z, t)  # noqa: E731
        if probes is None:
            v, jac = jax.vmap(lambda e: jax.jvp(v_x, (xt,), (e,)), out_axes=(None, 0))(jnp.eye(d))
            div = jnp.trace(jac)
        else:
            v, jvps = jax.vmap(lambda e: jax.jvp(v_x, (xt,), (e,)), out_axes=(None, 0))(probes)
            div = jnp.mean(jnp.sum(probes * jvps, -1))
        return v, div

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), _solver(solver), t_start, jnp.asarray(sde.T, dtype=float),
        None,
        (x, jnp.zeros(())),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
    )
    x_T, integral = sol.ys[0][-1], sol.ys[1][-1]
    return prior(x_T) + integral


class _GaussianPrior(eqx.Module):
    """``log N(x; 0, variance I)``; a module so that jit caches on its value."""

    variance: float = eqx.field(static=True)

    def __call__(self, x):
        var = self.variance
        return -0.5 * (jnp.vdot(x, x) / var + x.shape[-1] * math.log(2 * math.pi * var))


def log_likelihood(
    score: ScoreFn,
    sde: SDE,
    x: Float[Array, " d"],
    *,
    t_start: float = 1e-5,
    divergence_method: DivergenceMethod = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    probe: Probe = "gaussian",
    prior_log_prob: Callable[[Array], Array] | None = None,
    solver: Literal["tsit5", "dopri5"] = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> Float[Array, ""]:
    """``log p_{t_start}(x)`` of the probability-flow ODE's density, in nats, at one point.

    Integrates ``(x_t, int div v)`` from ``t_start`` to ``T`` and adds the prior log-density.

    Args:
        score: ``(x: (d,), t) -> (d,)``.
        sde: the forward SDE.
        x: the point, shape ``(d,)``.
        t_start: the time the data live at (Score-SDE: ``1e-5``).
        divergence_method: ``"exact"`` (``d`` JVPs per evaluation; low dimension) or
            ``"hutchinson"`` (probes drawn once per trajectory, as in Score-SDE).
        key: PRNG key for the probes; required for ``"hutchinson"``.
        num_probes: Hutchinson probes.
        probe: ``"gaussian"`` or ``"rademacher"``.
        prior_log_prob: log-density at ``T``; default the SDE's ``N(0, prior_variance I)``.
        solver, rtol, atol, max_steps: see :func:`solve`.

    Returns:
        The log-likelihood in nats.
    """
    _check_times(t_start, float(sde.T), sde)
    if divergence_method == "exact":
        probes = None
    elif divergence_method == "hutchinson":
        if key is None:
            raise ValueError("log_likelihood(divergence_method='hutchinson') needs key=")
        probes = hutchinson_probes(key, num_probes, x.shape[-1], probe)
    else:
        raise ValueError(
            f"divergence_method={divergence_method!r}: allowed are 'exact', 'hutchinson'"
        )
    prior = _GaussianPrior(float(sde.prior_variance)) if prior_log_prob is None else prior_log_prob
    t_start, rtol, atol = (jnp.asarray(v, dtype=float) for v in (t_start, rtol, atol))
    return _log_likelihood(score, sde, x, probes, t_start, solver, rtol, atol, max_steps, prior)


def negative_log_likelihood(
    score: ScoreFn,
    sde: SDE,
    x: Float[Array, "n d"],
    *,
    unit: Literal["nats", "bits_per_dim"] = "nats",
    key: PRNGKeyArray | None = None,
    **kwargs,
) -> Float[Array, " n"]:
    """The probability-flow NLL of each of ``n`` points.

    Args:
        score: ``(x: (d,), t) -> (d,)``.
        sde: the forward SDE.
        x: ``(n, d)`` points.
        unit: ``"nats"`` or ``"bits_per_dim"`` (``nats / (d ln 2)``; no dequantisation offset,
            which image benchmarks add for 8-bit data).
        key: PRNG key for Hutchinson probes (split per point).
        **kwargs: passed to :func:`log_likelihood`.

    Returns:
        ``(n,)`` negative log-likelihoods.
    """
    if unit not in ("nats", "bits_per_dim"):
        raise ValueError(f"unit={unit!r}: allowed are 'nats', 'bits_per_dim'")
    if key is None:
        ll = jax.vmap(lambda xi: log_likelihood(score, sde, xi, **kwargs))(x)
    else:
        keys = jax.random.split(key, x.shape[0])
        ll = jax.vmap(lambda xi, ki: log_likelihood(score, sde, xi, key=ki, **kwargs))(x, keys)
    nll = -ll
    if unit == "bits_per_dim":
        return nll / (x.shape[-1] * math.log(2))
    return nll

