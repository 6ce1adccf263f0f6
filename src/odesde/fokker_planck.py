"""Fokker–Planck residual operators for forward SDEs with linear drift.

For ``dx = f(t) x dt + g(t) dw`` on ``R^d`` (:mod:`odesde.sde`) the marginals ``q_t`` solve
``d_t q = -div(f q) + g^2 / 2 Lap q``. Since ``div f = f(t) d`` does not depend on ``x``:

- log-density form (Lai et al. digest, Sec. 1; Deveney et al. digest, Sec. 3):
  ``d_t log q = -f(t) d - f(t) <x, s> + g^2 / 2 (div s + |s|^2)``, ``s = grad log q``;
- score form, the *score FPE* (Lai et al., Sec. 1, boxed equation):
  ``d_t s = grad_x [ g^2 / 2 (div s + |s|^2) - f(t) <x, s> ]``.

This module evaluates the residuals of both at ONE point ``x`` of shape ``(d,)`` and a scalar
forward time ``t``; ``vmap`` over batches. Score functions follow the project convention
``score(x: (d,), t) -> (d,)``; potentials ``phi(x: (d,), t) -> ()``.

Derivatives are exact by autodiff unless an estimator is chosen: Hutchinson's trace estimator
for divergences and Laplacians, and the official FP-Diffusion code's three-point finite
difference for the time derivative.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .sde import SDE

Scalar = Float[ArrayLike, ""]
ScoreFn = Callable[[Float[Array, " d"], Scalar], Float[Array, " d"]]
PotentialFn = Callable[[Float[Array, " d"], Scalar], Float[Array, ""]]
VectorField = Callable[[Float[Array, " d"]], Float[Array, " d"]]

DivergenceMethod = Literal["exact", "hutchinson"]
TimeDerivativeMethod = Literal["exact", "finite_difference"]
Probe = Literal["gaussian", "rademacher"]

#: The official code's finite-difference steps (Lai et al. digest, Sec. 2): backward, forward.
FD_STEPS = (1e-3, 5e-4)

__all__ = [
    "FD_STEPS",
    "hutchinson_probes",
    "divergence",
    "time_derivative",
    "score_fpe_scalar_term",
    "score_fpe_residual",
    "log_density_fp_residual",
]


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: allowed are {', '.join(map(repr, allowed))}")


def hutchinson_probes(
    key: PRNGKeyArray, num_probes: int, dim: int, probe: Probe = "gaussian"
) -> Float[Array, "num_probes dim"]:
    """Probe vectors ``v`` with ``E[v v^T] = I`` for Hutchinson's trace estimator.

    Args:
        key: a JAX PRNG key.
        num_probes: number of probes (a positive int).
        dim: their dimension.
        probe: ``"gaussian"`` (``N(0, I)``, the official FP-Diffusion code) or
            ``"rademacher"`` (entries ``+-1``, lower variance).

    Returns:
        A ``(num_probes, dim)`` array.
    """
    _check_choice("probe", probe, ("gaussian", "rademacher"))
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive int, got {num_probes!r}")
    if probe == "gaussian":
        return jax.random.normal(key, (num_probes, dim))
    return jax.random.rademacher(key, (num_probes, dim), dtype=float)


def divergence(
    fn: VectorField,
    x: Float[Array, " d"],
    *,
    method: DivergenceMethod = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    probe: Probe = "gaussian",
) -> Float[Array, ""]:
    """The divergence ``div fn(x) = tr(J_fn(x))`` of a vector field ``R^d -> R^d``.

    Args:
        fn: the vector field.
        x: the point, shape ``(d,)``.
        method: ``"exact"`` (trace of the forward-mode Jacobian: ``d`` JVPs) or
            ``"hutchinson"`` (Skilling–Hutchinson: the mean of ``v^T J v`` over probes, one JVP
            each; unbiased).
        key: PRNG key for the probes; required for ``"hutchinson"``.
        num_probes: number of probes for ``"hutchinson"``.
        probe: probe law for ``"hutchinson"``, see :func:`hutchinson_probes`.

    Returns:
        The (estimated) divergence, a scalar.
    """
    _check_choice("method", method, ("exact", "hutchinson"))
    if method == "exact":
        return jnp.trace(jax.jacfwd(fn)(x))
    if key is None:
        raise ValueError("divergence(method='hutchinson') needs key=")
    probes = hutchinson_probes(key, num_probes, x.shape[-1], probe)
    quad = jax.vmap(lambda v: jnp.vdot(v, jax.jvp(fn, (x,), (v,))[1]))(probes)
    return jnp.mean(quad)


def time_derivative(
    fn: Callable[[Scalar], Array],
    t: Scalar,
    *,
    method: TimeDerivativeMethod = "exact",
    steps: tuple[float, float] = FD_STEPS,
) -> Array:
    """``d fn / dt`` at ``t`` for a function of a scalar time.

    Args:
        fn: the function of time.
        t: the time.
        method: ``"exact"`` (one forward-mode JVP in ``t``; Lai et al. digest, Sec. 7) or
            ``"finite_difference"``: the official FP-Diffusion code's non-uniform three-point
            stencil (Lai et al. digest, Sec. 2), second-order accurate,
            ``(h_s^2 fn(t + h_d) + (h_d^2 - h_s^2) fn(t) - h_d^2 fn(t - h_s)) /
            (h_s h_d (h_s + h_d))``. Deviation from the code: the stencil centre is clamped to
            ``t >= h_s + 1e-5`` so that it never evaluates negative times (code defect 7).
        steps: ``(h_s, h_d)``, the backward and forward steps of the stencil.

    Returns:
        The derivative, shaped like ``fn(t)``.
    """
    _check_choice("method", method, ("exact", "finite_difference"))
    t = jnp.asarray(t, dtype=float)
    if method == "exact":
        return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]
    h_s, h_d = steps
    if not (h_s > 0 and h_d > 0):
        raise ValueError(f"time_derivative: steps must be positive, got {steps}")
    t = jnp.maximum(t, h_s + 1e-5)
    return (h_s**2 * fn(t + h_d) + (h_d**2 - h_s**2) * fn(t) - h_d**2 * fn(t - h_s)) / (
        h_s * h_d * (h_s + h_d)
    )


def score_fpe_scalar_term(
    score: ScoreFn,
    x: Float[Array, " d"],
    t: Scalar,
    *,
    sde: SDE,
    divergence_method: DivergenceMethod = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    probe: Probe = "gaussian",
) -> Float[Array, ""]:
    """``g^2 / 2 (div s + |s|^2) - f(t) <x, s>``: the bracket of the score FPE.

    At the true score it equals ``d_t log q_t + f(t) d`` (the log-density FPE without
    ``d_t log q`` and ``div f``). Its ``x``-gradient is the right-hand side of the score FPE,
    and it is the *scalar term* of the official FP-Diffusion loss (Lai et al. digest, Sec. 2;
    for Song's VP it reads ``beta / 2 (div s + |s|^2 + <x, s>)``). Caveat (digest, Sec. 3): at
    the true VP score its mean over ``q_t`` is ``-beta d / 2``, not 0; a heuristic of the code.

    Args:
        score: ``(x: (d,), t) -> (d,)``.
        x: the point, shape ``(d,)``.
        t: forward time.
        sde: the forward SDE (linear drift ``f(t) x``).
        divergence_method: ``"exact"`` or ``"hutchinson"`` (see :func:`divergence`).
        key: PRNG key for Hutchinson probes.
        num_probes: Hutchinson probes.
        probe: ``"gaussian"`` or ``"rademacher"``.

    Returns:
        A scalar.
    """
    s_x = lambda y: score(y, t)  # noqa: E731
    s = s_x(x)
    div = divergence(s_x, x, method=divergence_method, key=key, num_probes=num_probes, probe=probe)
    return 0.5 * sde.diffusion(t) ** 2 * (div + jnp.vdot(s, s)) - sde.drift_coef(t) * jnp.vdot(x, s)


def score_fpe_residual(
    score: ScoreFn,
    x: Float[Array, " d"],
    t: Scalar,
    *,
    sde: SDE,
    divergence_method: DivergenceMethod = "exact",
    time_derivative_method: TimeDerivativeMethod = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    probe: Probe = "gaussian",
    fd_steps: tuple[float, float] = FD_STEPS,
) -> Float[Array, " d"]:
    """The score Fokker–Planck residual of Lai et al. (digest, Sec. 2, ``epsilon_theta``).

    ``eps(x, t) = d_t s - grad_x [ g^2 / 2 (div s + |s|^2) - f(t) <x, s> ]`` for the forward SDE
    ``dx = f(t) x dt + g(t) dw``. This is Lai et al.'s general form
    ``d_t s - grad[g^2/2 div s + g^2/2 |s|^2 - <f, s> - div f]`` with ``f = f(t) x``: the term
    ``div f = f(t) d`` is constant in ``x`` and drops out of the gradient. Song's VP gives
    ``d_t s - beta / 2 grad(div s + |s|^2 + <x, s>)``; VE gives ``d_t s - sigma sigma' grad(div s
    + |s|^2)`` (digest, Sec. 1). It vanishes at the exact score of the SDE's marginals.

    With ``divergence_method="hutchinson"`` the probes are fixed in ``x`` before the gradient,
    so the residual is unbiased (its square is biased upward by the probe variance), as in the
    official code.

    Args:
        score: ``(x: (d,), t) -> (d,)``.
        x: the point, shape ``(d,)``.
        t: forward time.
        sde: the forward SDE.
        divergence_method: ``"exact"`` or ``"hutchinson"`` (see :func:`divergence`).
        time_derivative_method: ``"exact"`` or ``"finite_difference"`` (see
            :func:`time_derivative`).
        key: PRNG key, required for ``"hutchinson"``.
        num_probes: Hutchinson probes.
        probe: ``"gaussian"`` or ``"rademacher"``.
        fd_steps: ``(h_s, h_d)`` of the finite difference.

    Returns:
        The residual vector, shape ``(d,)``.
    """
    if divergence_method == "hutchinson" and key is None:
        raise ValueError("score_fpe_residual(divergence_method='hutchinson') needs key=")
    ds_dt = time_derivative(
        lambda tt: score(x, tt), t, method=time_derivative_method, steps=fd_steps
    )
    bracket = lambda y: score_fpe_scalar_term(  # noqa: E731
        score, y, t, sde=sde, divergence_method=divergence_method, key=key,
        num_probes=num_probes, probe=probe,
    )
    return ds_dt - jax.grad(bracket)(x)


def log_density_fp_residual(
    potential: PotentialFn,
    x: Float[Array, " d"],
    t: Scalar,
    *,
    sde: SDE,
    laplacian_method: DivergenceMethod = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    probe: Probe = "gaussian",
) -> Float[Array, ""]:
    """The log-density Fokker–Planck residual of Deveney et al. (digest, Sec. 3, ``R_theta``).

    For a potential ``phi`` (``e^phi`` models the density, ``s = grad_x phi``):
    ``R = d_t phi + div f + f . grad phi - g^2 / 2 (Lap phi + |grad phi|^2)``, here with
    ``f = f(t) x``, so ``div f = f(t) d`` and ``f . grad phi = f(t) <x, grad phi>``. For the OU
    process of the paper (``f = -1``, ``g = 1``) it is the trained
    ``d_t phi - d - x . grad phi - |grad phi|^2 / 2 - Lap phi / 2``. ``R = 0`` iff ``e^phi``
    solves the forward Fokker–Planck equation. Adding ``c(t)`` to ``phi`` adds ``c'(t)`` to ``R``
    (the gauge caveat, digest Sec. 3).

    Args:
        potential: ``(x: (d,), t) -> ()``.
        x: the point, shape ``(d,)``.
        t: forward time.
        sde: the forward SDE.
        laplacian_method: ``"exact"`` (trace of the Hessian, as trained by Deveney et al.) or
            ``"hutchinson"`` (Hutchinson estimate of the trace; not in the paper).
        key: PRNG key, required for ``"hutchinson"``.
        num_probes: Hutchinson probes.
        probe: ``"gaussian"`` or ``"rademacher"``.

    Returns:
        The residual, a scalar.
    """
    t = jnp.asarray(t, dtype=float)
    dphi_dt = jax.jvp(lambda tt: potential(x, tt), (t,), (jnp.ones_like(t),))[1]
    grad_fn = jax.grad(potential)
    grad = grad_fn(x, t)
    lap = divergence(
        lambda y: grad_fn(y, t), x, method=laplacian_method, key=key, num_probes=num_probes,
        probe=probe,
    )
    f = sde.drift_coef(t)
    return (
        dphi_dt
        + f * x.shape[-1]
        + f * jnp.vdot(x, grad)
        - 0.5 * sde.diffusion(t) ** 2 * (lap + jnp.vdot(grad, grad))
    )
