"""Exact Wasserstein errors of diffusion samplers on Gaussian data (Pierret & Galerne).

For data ``N(0, Sigma)`` every law in the reverse process is a centred Gaussian co-diagonal with
``Sigma``, so everything reduces to one variance per eigenvalue ``lambda_i`` of ``Sigma``
(digest of arXiv:2405.14250, Secs. 1-3):

- the forward marginals ``lambda_i(t) = alpha_t^2 lambda_i + sigma_t^2``;
- the exact backward SDE and probability-flow ODE started from variance ``s0``;
- the six fixed-step schemes as linear recursions ``v <- a^2 v + b^2`` on the grid of
  :mod:`odesde.samplers`;
- the closed-form ``W2`` between co-diagonal centred Gaussians.

Everything is float64. The recursions run as one ``lax`` loop over steps, vectorised over
eigenvalues, truncation times and schemes. The forward SDE defaults to the paper's VP SDE
(:meth:`odesde.sde.VPSDE.pierret_galerne`); the formulas are written for any
``dx = f x dt + g dw`` whose ``g^2 / (-2 f)`` is constant (every VP SDE) and reduce to the
digest's table for the paper's.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
import concurrent.futures
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from .samplers import (
    ODE_SCHEMES,
    SCHEMES,
    SDE_SCHEMES,
    check_sde_supports,
    check_ddpm_steps,
    check_grid,
    check_scheme,
    step_size,
    time_grid,
)
from .sde import SDE, VPSDE

PIERRET_GALERNE = VPSDE.pierret_galerne()
"""The paper's forward SDE: ``dx = -beta x dt + sqrt(2 beta) dw``, beta 0.05 -> 10, T = 1."""

CONTINUOUS: tuple[str, ...] = ("sde", "ode")
"""Exact continuous backward SDE and probability-flow ODE (no discretisation)."""
STARTS: tuple[str, ...] = ("pT", "normal")
"""Initialisations: the exact forward marginal ``p_T`` or the prior ``N(0, I)``."""
Start = Literal["pT", "normal"]
HEUN_POINTS: tuple[str, ...] = ("as_published", "corrected")


# ---------------------------------------------------------------------------------------------
# Spectra, marginals and the exact continuous solutions (digest Sec. 1)


def as_spectrum(lam: ArrayLike, name: str = "lam") -> np.ndarray:
    """Validate eigenvalues: a finite non-negative 1-D float64 array, ``-0.0`` made ``+0.0``.

    ``-0.0`` (how the published 2025 CIFAR file stores its zeros) would give ``1/(-0.0) = -inf``
    in the recursions; ``np.maximum(lam, 0.0) + 0.0`` turns it into ``+0.0``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of eigenvalues, got shape "
                         f"{lam.shape}")
    if not np.all(np.isfinite(lam)) or np.any(lam < 0):
        bad = lam[~(np.isfinite(lam) & (lam >= 0))][:3]
        raise ValueError(f"{name} must be finite and >= 0 (eigenvalues of a covariance), got "
                         f"values such as {bad.tolist()}")
    return np.maximum(lam, 0.0) + 0.0


def marginal_spectrum(
    lam: Float[ArrayLike, "*d"], t: Float[ArrayLike, ""], *, sde: SDE = PIERRET_GALERNE
) -> Float[Array, "*d"]:
    """Eigenvalues of ``Sigma_t``: ``lambda_i(t) = e^{-2B(t)} lambda_i + 1 - e^{-2B(t)}``.

    Digest Sec. 1 (the paper's Eq. for ``Sigma_t``), generically ``alpha_t^2 lambda + sigma_t^2``.
    """
    return sde.marginal_variance(jnp.asarray(lam, dtype=float), jnp.asarray(t, dtype=float))


def initial_variance(
    lam: Float[ArrayLike, " d"], start: Start, *, sde: SDE = PIERRET_GALERNE
) -> Float[Array, " d"]:
    """Variance ``s0`` of the backward start: ``lambda_i(T)`` (``"pT"``) or the prior's.

    Args:
        lam: data eigenvalues.
        start: ``"pT"`` (exact ``p_T``: no initialisation error) or ``"normal"``
            (``N(0, prior_variance I)``, the paper's ``N_0``).

    Returns:
        ``s0`` per eigenvalue.
    """
    lam = jnp.asarray(lam, dtype=float)
    if start == "pT":
        return marginal_spectrum(lam, sde.T, sde=sde)
    if start == "normal":
        return jnp.full_like(lam, sde.prior_variance)
    raise ValueError(f"start={start!r}: allowed are {STARTS}")


def exact_variance(
    lam: Float[ArrayLike, " d"],
    t: Float[ArrayLike, ""],
    *,
    flow: Literal["sde", "ode"],
    s0: Float[ArrayLike, "*d"],
    sde: SDE = PIERRET_GALERNE,
) -> Float[Array, " d"]:
    """Variance at forward time ``t`` of the exact backward SDE or ODE started with ``s0``.

    Digest Sec. 1, boxed formulas (with ``e^{-(B(T)-B(t))} = alpha_T / alpha_t``):
    ``Var^SDE = l(t) + (alpha_T/alpha_t)^2 (l(t)/l(T))^2 (s0 - l(T))`` and
    ``Var^ODE = s0 l(t) / l(T)``.

    Args:
        lam: data eigenvalues.
        t: forward time in ``[0, T]``.
        flow: ``"sde"`` or ``"ode"``.
        s0: variance of the start at forward time ``T`` (broadcast against ``lam``).
        sde: the forward SDE.

    Returns:
        The variance along each eigenvector.
    """
    lam = jnp.asarray(lam, dtype=float)
    s0 = jnp.asarray(s0, dtype=float)
    r_t = marginal_spectrum(lam, t, sde=sde)
    r_T = marginal_spectrum(lam, sde.T, sde=sde)
    if flow == "ode":
        # (s0 / r_T) first: exactly 1 when s0 is p_T's variance, so the p_T start is exact.
        return (s0 / r_T) * r_t
    if flow == "sde":
        decay = jnp.exp(2.0 * (sde.log_mean_scale(sde.T) - sde.log_mean_scale(t)))
        return r_t + decay * (r_t / r_T) ** 2 * (s0 - r_T)
    raise ValueError(f"flow={flow!r}: allowed are {CONTINUOUS}")


def w2(
    v1: Float[ArrayLike, "*d"],
    v2: Float[ArrayLike, "*d"],
    *,
    weights: Float[ArrayLike, "*d"] | None = None,
    axis: int | None = None,
) -> Float[Array, "..."]:
    """``W2(N(0, diag v1), N(0, diag v2))`` in a common eigenbasis.

    Digest Sec. 1: ``(sum_i (sqrt(v1_i) - sqrt(v2_i))^2)^{1/2}``; ``weights`` counts repeated
    eigenvalues. An infinite variance gives ``inf``.

    Args:
        v1: variances of the first Gaussian.
        v2: variances of the second Gaussian.
        weights: multiplicity of each entry (default 1).
        axis: axis summed over (default: all).

    Returns:
        The distance.
    """
    diff2 = (jnp.sqrt(jnp.asarray(v1, dtype=float)) - jnp.sqrt(jnp.asarray(v2, dtype=float))) ** 2
    if weights is not None:
        diff2 = jnp.asarray(weights, dtype=float) * diff2
    return jnp.sqrt(jnp.sum(diff2, axis=axis))


# ---------------------------------------------------------------------------------------------
# One step of each scheme with the exact score (digest Sec. 3 table)


AFFINE_SCHEMES: tuple[str, ...] = ("em", "ei", "ddpm", "euler")
"""Schemes whose ``a`` is affine in ``1 / lambda_i(t_k)``: they only see the left endpoint."""


def affine_coefficients(
    scheme: str,
    t: Float[ArrayLike, ""],
    t_next: Float[ArrayLike, ""],
    dt: Float[ArrayLike, ""],
    *,
    sde: SDE = PIERRET_GALERNE,
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """``(p, q, b^2)`` with ``a = p + q / lambda_i(t)`` for em, ei, ddpm and euler.

    Digest Sec. 3 table, with ``F = -f(t)`` (the paper's ``beta_k``), ``G2 = g(t)^2``
    (``2 beta_k``) and ``c = G2 / (2F)`` (1 for the paper's SDE):

    - em: ``a = 1 + dt (F - G2 / r)``, ``b^2 = dt G2``;
    - ei: ``a = 1 + gamma1 (1 - 2c / r)``, ``b^2 = c (e^{2 eta} - 1)``, ``gamma1 = e^eta - 1``,
      ``eta = B(t) - B(t_next)`` (the exact integral of ``-f`` over the step);
    - ddpm: ``a = (1 - G2 dt / r) / sqrt(1 - beta^D)``, ``b^2 = G2 dt``, ``beta^D = 2 F dt``;
    - euler: ``a = 1 + dt (F - G2 / (2 r))``, ``b^2 = 0``.

    Args:
        scheme: one of :data:`AFFINE_SCHEMES`.
        t: left endpoint (forward time).
        t_next: right endpoint (forward time).
        dt: the backward step size.
        sde: the forward SDE.

    Returns:
        The scalars ``p``, ``q`` and ``b^2`` of the step.
    """
    F = -sde.drift_coef(t)
    G2 = sde.diffusion(t) ** 2
    if scheme == "em":
        return 1.0 + dt * F, -dt * G2, dt * G2
    if scheme == "ei":
        eta = sde.log_mean_scale(t_next) - sde.log_mean_scale(t)
        gamma1 = jnp.expm1(eta)
        c = G2 / (2.0 * F)
        return 1.0 + gamma1, -2.0 * c * gamma1, c * jnp.expm1(2.0 * eta)
    if scheme == "ddpm":
        scale = 1.0 / jnp.sqrt(1.0 - 2.0 * F * dt)
        return scale, -G2 * dt * scale, G2 * dt
    if scheme == "euler":
        return 1.0 + dt * F, -0.5 * dt * G2, jnp.zeros_like(F)
    raise ValueError(f"scheme={scheme!r} is not affine: allowed are {AFFINE_SCHEMES}")


def _node(sde, t):
    """Scalars of forward time ``t`` that make ``lambda_i(t)`` and the PF-ODE rate.

    ``(alpha_t^2, sigma_t^2, F, H)`` with ``lambda_i(t) = alpha_t^2 lambda_i + sigma_t^2`` and
    the rate ``h_i(t) = F - H / lambda_i(t)`` (``F = -f``, ``H = g^2 / 2``; the paper's
    ``g_i = beta (1 - 1 / lambda_i(t))``).
    """
    return (sde.mean_scale(t) ** 2, sde.noise_variance(t), -sde.drift_coef(t),
            0.5 * sde.diffusion(t) ** 2)


def _inverse_variance(node, lam):
    alpha2, sigma2, _, _ = node
    return 1.0 / (alpha2 * lam + sigma2)


def _rate(node, inv_r):
    _, _, F, H = node
    return F - H * inv_r


def _ode_multiplier(scheme, dt, h0, h_mid, h1):
    """Heun's or RK4's ``a`` from the PF-ODE rates at the left, middle and right nodes."""
    if scheme == "heun":
        return 1.0 + 0.5 * dt * (h0 + h1 * (1.0 + dt * h0))
    c1 = h0
    c2 = h_mid * (1.0 + 0.5 * dt * c1)
    c3 = h_mid * (1.0 + 0.5 * dt * c2)
    c4 = h1 * (1.0 + dt * c3)
    return 1.0 + dt / 6.0 * (c1 + 2.0 * c2 + 2.0 * c3 + c4)


def step_coefficients(
    lam: Float[ArrayLike, "*d"],
    scheme: str,
    t: Float[ArrayLike, ""],
    t_next: Float[ArrayLike, ""],
    dt: Float[ArrayLike, ""],
    *,
    sde: SDE = PIERRET_GALERNE,
) -> tuple[Float[Array, "*d"], Float[Array, "*d"]]:
    """``(a^2, b^2)`` of one step ``y <- a y + b z`` from forward time ``t`` to ``t_next``.

    Digest Sec. 3 table. em/ei/ddpm/euler: see :func:`affine_coefficients`. Heun and RK4 use
    the PF-ODE rate ``h(s) = F(s) - G2(s) / (2 lambda_i(s))`` (the paper's ``g_i``):
    heun ``a = 1 + dt/2 [h(t) + h(t_next)(1 + dt h(t))]``; rk4
    ``a = 1 + dt/6 (C1 + 2 C2 + 2 C3 + C4)`` with the midpoint ``t - dt/2``; ``b = 0``.

    Args:
        lam: data eigenvalues.
        scheme: one of ``"em"``, ``"ei"``, ``"ddpm"``, ``"euler"``, ``"heun"``, ``"rk4"``.
        t: left endpoint (forward time).
        t_next: right endpoint (forward time), ``t - dt`` up to the grid's exact endpoint.
        dt: the backward step size.
        sde: the forward SDE.

    Returns:
        ``a^2`` and ``b^2`` per eigenvalue (``b^2`` broadcast to the shape of ``a^2``).
    """
    lam = jnp.asarray(lam, dtype=float)
    left = _node(sde, t)
    inv_r = _inverse_variance(left, lam)
    if scheme in AFFINE_SCHEMES:
        p, q, b2 = affine_coefficients(scheme, t, t_next, dt, sde=sde)
        return (p + q * inv_r) ** 2, jnp.broadcast_to(b2, inv_r.shape)
    if scheme not in ("heun", "rk4"):
        raise ValueError(f"scheme={scheme!r} is not a known scheme: allowed are {SCHEMES}")
    right = _node(sde, t_next)
    h_mid = None
    if scheme == "rk4":
        mid = _node(sde, t - 0.5 * dt)
        h_mid = _rate(mid, _inverse_variance(mid, lam))
    a = _ode_multiplier(scheme, dt, _rate(left, inv_r), h_mid,
                        _rate(right, _inverse_variance(right, lam)))
    return a**2, jnp.zeros_like(a)


# ---------------------------------------------------------------------------------------------
# The recursions: final variances and trajectories


def _grid_point(k, n_points, eps, T):
    # samplers.time_grid's point k, for a traced n_points; the last point is exactly eps.
    dt = (T - eps) / (jnp.asarray(n_points).astype(float) - 1.0)
    return jnp.where(k == n_points - 1, eps, T - jnp.asarray(k).astype(float) * dt)


def _max_steps(n_points_max: int) -> int:
    # Static length of the per-step tables: a power of two, so that one compilation serves
    # every N up to it.
    return max(64, 1 << (int(n_points_max) - 2).bit_length())


# A few thousand scalars: LLVM's optimisations would cost more compile time than they save.
@functools.partial(jax.jit, static_argnames=("max_steps",),
                   compiler_options={"xla_backend_optimization_level": 0})
def _step_tables(sde, eps, n_points, *, max_steps):
    """Per-step scalars of every scheme, shape ``(E, max_steps, ...)``, for ``eps`` ``(E,)``.

    Steps past ``N - 2`` repeat the last one (never used). One small program for all
    schemes and all ``N`` (traced), kept out of the loops: the loops then hold only the
    per-eigenvalue arithmetic and compile quickly.
    """
    T = sde.T
    eps = eps[:, None]
    dt = (T - eps) / (n_points.astype(float) - 1.0)
    k = jnp.minimum(jnp.arange(max_steps), n_points - 2)[None, :]
    t = _grid_point(k, n_points, eps, T)
    t_next = _grid_point(k + 1, n_points, eps, T)
    coefs = [affine_coefficients(s, t, t_next, dt, sde=sde) for s in AFFINE_SCHEMES]
    return {
        "dt": dt[:, 0],
        "left": _node(sde, t),
        "right": _node(sde, t_next),
        "mid": _node(sde, t - 0.5 * dt),
        "affine": tuple(jnp.stack(c, axis=-1) for c in zip(*coefs)),  # (E, K, 4)
    }


def _propagate(lam, s0, tables, n_points, schemes):
    """Final variances ``v_{N-1}`` of each scheme from each start; shape ``(S, *s0.shape)``.

    ``tables``: :func:`_step_tables` of one truncation time; ``s0``: ``(n_starts, d)``.
    ``n_points`` is traced: one compilation serves every ``N``. Shared work:

    - every scheme and start uses the same ``1 / lambda_i(t_k)``; Heun and RK4 reuse their
      right endpoint's as the next left endpoint's;
    - the ODE schemes (``b = 0``) carry only ``prod a^2``, times ``s0`` at the end; the SDE
      schemes carry the variance of each start (an affine map ``P s0 + Q`` would give
      ``inf * 0 = nan`` where Heun/RK4 are infinite, so it is not used for them);
    - one state array per scheme (not a stacked one), which XLA fuses into a single pass.
    """
    dt = tables["dt"]
    unique = tuple(dict.fromkeys(schemes))
    ode = [s for s in ("heun", "rk4") if s in unique]
    at = lambda node, k: tuple(x[k] for x in node)  # noqa: E731

    def body(k, carry):
        states, inv_r = carry
        left = at(tables["left"], k)
        if not ode:
            inv_r = _inverse_variance(left, lam)
        a2 = {}
        for s in unique:
            if s in AFFINE_SCHEMES:
                j = AFFINE_SCHEMES.index(s)
                a2[s] = (tables["affine"][0][k, j] + tables["affine"][1][k, j] * inv_r) ** 2
        if ode:
            right = at(tables["right"], k)
            inv_next = _inverse_variance(right, lam)
            h0, h1 = _rate(left, inv_r), _rate(right, inv_next)
            h_mid = None
            if "rk4" in ode:
                mid = at(tables["mid"], k)
                h_mid = _rate(mid, _inverse_variance(mid, lam))
            for s in ode:
                a2[s] = _ode_multiplier(s, dt, h0, h_mid, h1) ** 2
            inv_r = inv_next
        new = []
        for s, x in zip(unique, states):
            if s in SDE_SCHEMES:
                new.append(a2[s] * x + tables["affine"][2][k, AFFINE_SCHEMES.index(s)])
            else:
                new.append(a2[s] * x)
        return tuple(new), inv_r

    d = lam.shape[-1]
    states = tuple(s0 if s in SDE_SCHEMES else jnp.ones(d) for s in unique)
    inv_0 = _inverse_variance(at(tables["left"], 0), lam) if ode else jnp.zeros(d)
    states, _ = lax.fori_loop(0, n_points - 1, body, (states, inv_0))
    final = {s: x if s in SDE_SCHEMES else x * s0 for s, x in zip(unique, states)}
    return jnp.stack([final[s] for s in schemes])


_propagate_jit = jax.jit(_propagate, static_argnames=("schemes",),
                         compiler_options={"xla_backend_optimization_level": 1})


# LLVM's level 1 vectorises these loops as well as the default, compiling ~40% faster.
@functools.partial(jax.jit, static_argnames=("schemes", "chunk"),
                   compiler_options={"xla_backend_optimization_level": 1})
def _w2_grid(lam, weights, tables, n_points, sde, *, schemes, chunk=2048):
    """W2 to the data for every (scheme, eps, start); shape ``(S, E, n_starts)``.

    Eigenvalues run in chunks so that the loop's state stays in cache (chunks pad with
    ``lambda = 1`` of weight 0, where every scheme is finite).
    """
    d = lam.shape[0]
    chunk = min(chunk, d)
    n_chunks = -(-d // chunk)
    pad = n_chunks * chunk - d
    lam_c = jnp.concatenate([lam, jnp.ones(pad)]).reshape(n_chunks, chunk)
    w_c = jnp.concatenate([weights, jnp.zeros(pad)]).reshape(n_chunks, chunk)

    def per_chunk(args):
        lam, weights = args
        s0 = jnp.stack([initial_variance(lam, start, sde=sde) for start in STARTS])

        def per_eps(tables_e):
            v = _propagate(lam, s0, tables_e, n_points, schemes)
            return jnp.sum(weights * (jnp.sqrt(v) - jnp.sqrt(lam)) ** 2, axis=-1)

        return jax.vmap(per_eps, out_axes=1)(tables)

    return jnp.sqrt(jnp.sum(lax.map(per_chunk, (lam_c, w_c)), axis=0))


@functools.lru_cache(maxsize=64)
def _compiled_w2_grid(d, table_shapes, sde, schemes):
    """:func:`_w2_grid` compiled ahead of time for ``d`` eigenvalues and these table shapes.

    Ahead-of-time so that the compilations of several scheme groups can run in parallel
    threads before the step tables exist; cached here because lowered programs do not share
    ``jax.jit``'s own cache.
    """
    treedef, leaves = table_shapes
    tables = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*leaf) for leaf in leaves])
    lam = jax.ShapeDtypeStruct((d,), jnp.float64)
    n = jax.ShapeDtypeStruct((), jnp.asarray(2).dtype)
    return _w2_grid.lower(lam, lam, tables, n, sde, schemes=schemes).compile()


@functools.partial(jax.jit, static_argnames=("flow",))
def _w2_continuous(lam, weights, eps, sde, *, flow):
    def per_eps(e):
        out = []
        for start in STARTS:
            s0 = initial_variance(lam, start, sde=sde)
            out.append(w2(exact_variance(lam, e, flow=flow, s0=s0, sde=sde), lam,
                          weights=weights))
        return jnp.stack(out)

    return jax.vmap(per_eps)(eps)


def _unique(lam: np.ndarray, bucket: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    # Equal eigenvalues follow equal recursions: ADSN's 131,072 zeros become one entry.
    # Padding (lambda = 1, weight 0: finite for every scheme) to a power of two or a
    # multiple of `bucket` lets spectra of similar sizes share one compilation.
    values, counts = np.unique(lam, return_counts=True)
    n = values.size
    size = max(16, 1 << (n - 1).bit_length()) if n <= bucket else -(-n // bucket) * bucket
    values = np.concatenate([values, np.ones(size - n)])
    counts = np.concatenate([counts.astype(np.float64), np.zeros(size - n)])
    return values, counts


def _validate_common(scheme, eps_values, T):
    check_scheme(scheme, SCHEMES + CONTINUOUS)
    for e in eps_values:
        if not np.isfinite(e) or not 0.0 <= e < T:
            raise ValueError(f"eps={e!r} must satisfy 0 <= eps < T = {T}")


def _check_start(start):
    if start not in STARTS:
        raise ValueError(f"start={start!r}: allowed are {STARTS} ('pT' = exact p_T, "
                         "'normal' = N(0, I))")


def final_variances(
    lam: Float[ArrayLike, " d"],
    scheme: str,
    *,
    n_points: int,
    eps: float,
    start: Start,
    sde: SDE = PIERRET_GALERNE,
) -> Float[Array, " d"]:
    """Output variance ``v_{i, N-1}`` of ``scheme`` along each eigenvector.

    Digest Sec. 3 recursion ``v_{k+1} = a_k^2 v_k + b_k^2`` from ``v_0 = s0``; for
    ``scheme = "sde"``/``"ode"`` the exact continuous solution at ``eps`` (Sec. 1).

    Args:
        lam: data eigenvalues.
        scheme: a scheme of :data:`odesde.samplers.SCHEMES`, or ``"sde"``/``"ode"``.
        n_points: grid points ``N`` (ignored for ``"sde"``/``"ode"``).
        eps: truncation time.
        start: ``"pT"`` or ``"normal"``.
        sde: the forward SDE.

    Returns:
        The variances, shape ``(d,)``, in the order of ``lam``.
    """
    lam = as_spectrum(lam)
    T = float(sde.T)
    _validate_common(scheme, [eps], T)
    _check_start(start)
    s0 = initial_variance(lam, start, sde=sde)
    if scheme in CONTINUOUS:
        return exact_variance(lam, eps, flow=scheme, s0=s0, sde=sde)
    _check_scheme_grid(sde, scheme, n_points, eps)
    tables = _step_tables(sde, jnp.asarray([eps], dtype=float), jnp.asarray(n_points),
                          max_steps=_max_steps(n_points))
    v = _propagate_jit(jnp.asarray(lam), s0[None], jax.tree.map(lambda x: x[0], tables),
                       jnp.asarray(n_points), schemes=(scheme,))
    return v[0, 0]


def _check_scheme_grid(sde, scheme, n_points, eps):
    check_grid(n_points, eps, float(sde.T))
    check_sde_supports(sde, scheme)
    if scheme == "ddpm":
        check_ddpm_steps(sde, int(n_points), float(eps))


def w2_to_data(lam: Float[ArrayLike, " d"], scheme: str, *, n_points: int, eps: float,
               start: Start) -> float:
    """``W2`` between the output of ``scheme`` and the data ``N(0, diag(lam))``.

    Pierret & Galerne's tables: the paper's VP SDE, ``n_points`` grid points (``N - 1``
    steps) uniform in backward time, stopped at forward time ``eps``, started from ``p_T``
    (``"pT"``) or ``N(0, I)`` (``"normal"``); always compared with ``p_0``. ``"sde"`` and
    ``"ode"`` give the exact continuous solutions (``n_points`` ignored). Zero eigenvalues at
    ``eps = 0`` make Heun and RK4 infinite: the result is then ``inf``.

    Args:
        lam: data eigenvalues (any order; ``-0.0`` allowed).
        scheme: ``"em"``, ``"ei"``, ``"ddpm"``, ``"euler"``, ``"heun"``, ``"rk4"``, ``"sde"``
            or ``"ode"``.
        n_points: ``N``; see :func:`nfe_to_points` for the NFE conventions.
        eps: truncation time, ``0 <= eps < 1``.
        start: ``"pT"`` or ``"normal"``.

    Returns:
        The distance, a Python float.
    """
    values = w2_table(lam, schemes=(scheme,), eps=(eps,), n_points=(n_points,), starts=(start,))
    return float(values[0, 0, 0, 0])


def nfe_to_points(nfe: int, scheme: str, *, heun_points: str = "corrected") -> int:
    """Grid points ``N`` of ``scheme`` for a budget of ``nfe`` score evaluations.

    Digest Sec. 3, NFE accounting: ``N = NFE`` for em/ei/ddpm/euler, ``N = NFE // 4`` for
    rk4, and for heun either ``NFE // 2`` (``heun_points="corrected"``: Figure 1 and the
    intended mapping) or ``NFE`` (``"as_published"``: what the ICML appendix table's Heun row
    was computed with, because of an ``if/if/else`` slip in the authors' loop).

    Args:
        nfe: number of function evaluations.
        scheme: one of :data:`odesde.samplers.SCHEMES`.
        heun_points: ``"corrected"`` or ``"as_published"``.

    Returns:
        ``N``, the number of grid points.
    """
    check_scheme(scheme)
    if heun_points not in HEUN_POINTS:
        raise ValueError(f"heun_points={heun_points!r}: allowed are {HEUN_POINTS}")
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} must be a positive integer")
    if scheme == "heun":
        n = nfe if heun_points == "as_published" else nfe // 2
    elif scheme == "rk4":
        n = nfe // 4
    else:
        n = nfe
    if n < 2:
        raise ValueError(f"nfe={nfe} gives n_points={n} < 2 for scheme={scheme!r}")
    return int(n)


def table_points(
    nfe: Sequence[int], schemes: Sequence[str], *, heun_points: str = "corrected"
) -> dict[str, tuple[int, ...]]:
    """``{scheme: (N per NFE column)}`` for :func:`w2_table` (continuous flows get the NFE)."""
    return {
        s: tuple(nfe) if s in CONTINUOUS else tuple(
            nfe_to_points(n, s, heun_points=heun_points) for n in nfe)
        for s in schemes
    }


def w2_table(
    lam: Float[ArrayLike, " d"],
    *,
    schemes: Sequence[str] = SCHEMES,
    eps: Sequence[float],
    n_points: Sequence[int] | Mapping[str, Sequence[int]],
    starts: Sequence[str] = STARTS,
    sde: SDE = PIERRET_GALERNE,
) -> np.ndarray:
    """A whole table of ``W2(output, p_0)``: schemes x eps x columns x starts.

    Pierret & Galerne's CIFAR/ADSN tables. Schemes sharing the same list of ``N`` run in one
    loop (one compilation for all ``N``, vectorised over eps, eigenvalues and schemes; both
    starts from one pass); repeated eigenvalues are computed once.

    Args:
        lam: data eigenvalues.
        schemes: row blocks; schemes of :data:`odesde.samplers.SCHEMES` or ``"sde"``/``"ode"``
            (the "Continuous" column; the same value in every column).
        eps: truncation times.
        n_points: grid points per column, either one sequence for all schemes (pre-ICML
            table: ``N`` grid points) or ``{scheme: sequence}`` of equal lengths (ICML table:
            see :func:`table_points`).
        starts: ``"pT"`` and/or ``"normal"``.
        sde: the forward SDE.

    Returns:
        float64 array of shape ``(len(schemes), len(eps), n_columns, len(starts))``.
    """
    lam = as_spectrum(lam)
    T = float(sde.T)
    schemes = tuple(schemes)
    eps = tuple(float(e) for e in eps)
    if not schemes or not eps or not starts:
        raise ValueError(f"w2_table needs at least one scheme, eps and start, got "
                         f"schemes={schemes}, eps={eps}, starts={tuple(starts)}")
    for s in schemes:
        _validate_common(s, eps, T)
    for s in starts:
        _check_start(s)
    if isinstance(n_points, Mapping):
        missing = [s for s in schemes if s not in n_points]
        if missing:
            raise ValueError(f"n_points has no entry for schemes {missing}")
        points = {s: tuple(n_points[s]) for s in schemes}
    else:
        points = {s: tuple(n_points) for s in schemes}
    n_cols = {len(p) for p in points.values()}
    if len(n_cols) != 1 or 0 in n_cols:
        raise ValueError(f"n_points must give the same (non-zero) number of columns to every "
                         f"scheme, got "
                         f"{ {s: len(p) for s, p in points.items()} }")
    (n_col,) = n_cols
    for s in dict.fromkeys(schemes):
        if s in CONTINUOUS:
            continue
        check_sde_supports(sde, s)
        for n in points[s]:
            for e in eps:
                check_grid(n, e, T)
                if s == "ddpm":
                    check_ddpm_steps(sde, int(n), e)

    values, weights = _unique(lam)
    lam_j, w_j, eps_j = jnp.asarray(values), jnp.asarray(weights), jnp.asarray(eps)
    out = np.empty((len(schemes), len(eps), n_col, len(STARTS)))
    groups: dict[tuple[int, ...], dict[str, list[int]]] = {}
    for row, s in enumerate(schemes):
        if s in CONTINUOUS:
            res = np.asarray(_w2_continuous(lam_j, w_j, eps_j, sde, flow=s))
            out[row] = res[:, None, :]
        else:
            groups.setdefault(points[s], {}).setdefault(s, []).append(row)

    max_steps = _max_steps(max((n for pts in groups for n in pts), default=2))
    n_struct = jax.ShapeDtypeStruct((), jnp.asarray(2).dtype)
    leaves, treedef = jax.tree.flatten(
        _step_tables.eval_shape(sde, eps_j, n_struct, max_steps=max_steps))
    table_shapes = (treedef, tuple((leaf.shape, leaf.dtype) for leaf in leaves))

    def run_group(pts, group, tables):
        compiled = _compiled_w2_grid(lam_j.shape[0], table_shapes, sde, tuple(group))
        for j, n in enumerate(pts):
            res = np.asarray(compiled(lam_j, w_j, tables[n].result(), jnp.asarray(n), sde))
            for res_s, rows in zip(res, group.values()):
                out[rows, :, j, :] = res_s

    # Each group's loop compiles in its own thread (XLA releases the GIL), heaviest first, while
    # this thread compiles and fills the step tables they will need: cold, the compilations
    # overlap instead of queueing.
    order = sorted(groups.items(), key=lambda g: -sum(g[0]) * len(g[1]))
    with ThreadPoolExecutor(max_workers=len(order) + 1) as pool:
        tables = {n: concurrent.futures.Future() for pts in groups for n in pts}
        futures = [pool.submit(run_group, pts, group, tables) for pts, group in order]
        for n, future in tables.items():
            try:
                future.set_result(_step_tables(sde, eps_j, jnp.asarray(n), max_steps=max_steps))
            except BaseException as err:  # the group threads must not wait forever
                future.set_exception(err)
        for future in futures:
            future.result()
    return out[..., [STARTS.index(s) for s in starts]]


def w2_along_time(
    lam: Float[ArrayLike, " d"],
    scheme: str,
    *,
    n_points: int,
    eps: float = 0.0,
    start: Start = "normal",
    sde: SDE = PIERRET_GALERNE,
) -> tuple[np.ndarray, np.ndarray]:
    """``W2(law at t_k, p_{t_k})`` at every grid point (Pierret & Galerne, Figure 1a).

    For a scheme, its own grid of ``n_points`` points; for ``"sde"``/``"ode"`` the exact
    solutions evaluated on that grid (use a fine grid for smooth curves). The reference is
    ``p_t`` at the current forward time, not ``p_0``.

    Args:
        lam: data eigenvalues.
        scheme: a scheme or ``"sde"``/``"ode"``.
        n_points: grid points ``N``.
        eps: truncation time.
        start: ``"pT"`` or ``"normal"``.
        sde: the forward SDE.

    Returns:
        Forward times ``t_k`` (decreasing from ``T`` to ``eps``) and the distances, shape
        ``(N,)`` each.
    """
    lam = as_spectrum(lam)
    T = float(sde.T)
    _validate_common(scheme, [eps], T)
    _check_start(start)
    check_grid(n_points, eps, T)
    if scheme not in CONTINUOUS:
        _check_scheme_grid(sde, scheme, n_points, eps)
    values, weights = _unique(lam)
    t, dist = _trajectory(jnp.asarray(values), jnp.asarray(weights),
                          jnp.asarray(eps, dtype=float), sde, scheme=scheme,
                          n_points=int(n_points), start=start)
    return np.asarray(t), np.asarray(dist)


@functools.partial(jax.jit, static_argnames=("scheme", "n_points", "start"))
def _trajectory(lam, weights, eps, sde, *, scheme, n_points, start):
    t = time_grid(n_points, eps, sde.T)
    s0 = initial_variance(lam, start, sde=sde)
    if scheme in CONTINUOUS:
        v = jax.vmap(lambda tk: exact_variance(lam, tk, flow=scheme, s0=s0, sde=sde))(t)
        r = jax.vmap(lambda tk: marginal_spectrum(lam, tk, sde=sde))(t)
        return t, w2(v, r, weights=weights[None], axis=-1)
    dt = step_size(n_points, eps, sde.T)

    def body(v, tt):
        tk, tn = tt
        a2, b2 = step_coefficients(lam, scheme, tk, tn, dt, sde=sde)
        v = a2 * v + b2
        return v, w2(v, marginal_spectrum(lam, tn, sde=sde), weights=weights)

    _, dist = lax.scan(body, s0, (t[:-1], t[1:]))
    d0 = w2(s0, marginal_spectrum(lam, sde.T, sde=sde), weights=weights)
    return t, jnp.concatenate([d0[None], dist])


def eigenvalue_errors(
    lam: Float[ArrayLike, " d"],
    scheme: str,
    *,
    n_points: int,
    eps: float,
    start: Start,
    sde: SDE = PIERRET_GALERNE,
) -> np.ndarray:
    """Per-eigenvalue error ``|sqrt(lambda_i) - sqrt(v_{i,N-1})|`` (Pierret & Galerne, Fig. 2).

    Args:
        lam: data eigenvalues.
        scheme: a scheme or ``"sde"``/``"ode"``.
        n_points: grid points ``N``.
        eps: truncation time.
        start: ``"pT"`` or ``"normal"``.
        sde: the forward SDE.

    Returns:
        The errors in the order of ``lam``; their root sum of squares is the ``W2``.
    """
    lam = as_spectrum(lam)
    v = final_variances(lam, scheme, n_points=n_points, eps=eps, start=start, sde=sde)
    return np.abs(np.sqrt(lam) - np.sqrt(np.asarray(v)))


def format_value(x: float) -> str:
    """The paper's printed format: ``0``, ``-`` for ``inf``, ``{:.1E}`` below ``1e-2`` or
    above ``1e2`` (exponent unpadded as printed: ``6.7E-4``, ``1.2E+3``), else two decimals.
    """
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-"
    if x == 0.0:
        return "0"
    if abs(x) < 1e-2 or abs(x) > 1e2:
        mantissa, exponent = f"{x:.1E}".split("E")
        return f"{mantissa}E{int(exponent):+d}".replace("E-0", "E-")
    return f"{x:.2f}"


__all__ = [
    "CONTINUOUS",
    "ODE_SCHEMES",
    "PIERRET_GALERNE",
    "SCHEMES",
    "SDE_SCHEMES",
    "STARTS",
    "AFFINE_SCHEMES",
    "affine_coefficients",
    "as_spectrum",
    "eigenvalue_errors",
    "exact_variance",
    "final_variances",
    "format_value",
    "initial_variance",
    "marginal_spectrum",
    "nfe_to_points",
    "step_coefficients",
    "table_points",
    "w2",
    "w2_along_time",
    "w2_table",
    "w2_to_data",
]
