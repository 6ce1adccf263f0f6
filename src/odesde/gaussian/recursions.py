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
eigenvalues, truncation times and schemes; :mod:`odesde.gaussian.tables` runs them over whole
tables. The forward SDE defaults to the paper's VP SDE
(:meth:`odesde.sde.VPSDE.pierret_galerne`); the formulas are written for any
``dx = f x dt + g dw`` whose ``g^2 / (-2 f)`` is constant (every VP SDE) and reduce to the
digest's table for the paper's.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ..samplers import (
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
from ..sde import SDE, VPSDE

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


def _step_table_values(sde, eps, n_points, *, max_steps):
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


# A few thousand scalars: LLVM's optimisations would cost more compile time than they save.
_step_tables = jax.jit(_step_table_values, static_argnames=("max_steps",),
                       compiler_options={"xla_backend_optimization_level": 0})


def _table_scalars(tables):
    """The per-step scalars of :func:`_propagate`, read from :func:`_step_tables` of one eps."""
    at = lambda node, k: tuple(x[k] for x in node)  # noqa: E731
    return lambda k: {"dt": tables["dt"], "left": at(tables["left"], k),
                      "right": at(tables["right"], k), "mid": at(tables["mid"], k),
                      "affine": tuple(x[k] for x in tables["affine"])}


def _propagate(lam, s0, scalars, n_points, schemes, affine_index=None):
    """Final variances ``v_{N-1}`` of each scheme from each start; shape ``(S, *s0.shape)``.

    ``scalars(k)``: the step's scalars (:func:`_table_scalars`);
    ``s0``: ``(n_starts, d)``. ``n_points`` is traced: one compilation serves every ``N``.
    ``"affine"`` in ``schemes`` is the affine scheme ``AFFINE_SCHEMES[affine_index]``, the
    index traced: one compilation serves em, ei, ddpm and euler. Shared work:

    - every scheme and start uses the same ``1 / lambda_i(t_k)``; Heun and RK4 reuse their
      right endpoint's as the next left endpoint's;
    - the ODE schemes (``b = 0``) carry only ``prod a^2``, times ``s0`` at the end; the SDE
      schemes carry the variance of each start (an affine map ``P s0 + Q`` would give
      ``inf * 0 = nan`` where Heun/RK4 are infinite, so it is not used for them);
    - one state array per scheme (not a stacked one), which XLA fuses into a single pass.
    """
    unique = tuple(dict.fromkeys(schemes))
    ode = [s for s in ("heun", "rk4") if s in unique]
    carries_variance = SDE_SCHEMES + ("affine",)

    def body(k, carry):
        states, inv_r = carry
        step = scalars(k)
        dt, left, affine = step["dt"], step["left"], step["affine"]
        if not ode:
            inv_r = _inverse_variance(left, lam)
        a2, b2 = {}, {}
        for s in unique:
            if s in AFFINE_SCHEMES or s == "affine":
                j = affine_index if s == "affine" else AFFINE_SCHEMES.index(s)
                a2[s] = (affine[0][j] + affine[1][j] * inv_r) ** 2
                b2[s] = affine[2][j]
        if ode:
            right = step["right"]
            inv_next = _inverse_variance(right, lam)
            h0, h1 = _rate(left, inv_r), _rate(right, inv_next)
            h_mid = None
            if "rk4" in ode:
                mid = step["mid"]
                h_mid = _rate(mid, _inverse_variance(mid, lam))
            for s in ode:
                a2[s] = _ode_multiplier(s, dt, h0, h_mid, h1) ** 2
            inv_r = inv_next
        new = []
        for s, x in zip(unique, states):
            new.append(a2[s] * x + b2[s] if s in carries_variance else a2[s] * x)
        return tuple(new), inv_r

    d = lam.shape[-1]
    states = tuple(s0 if s in carries_variance else jnp.ones(d) for s in unique)
    inv_0 = _inverse_variance(scalars(0)["left"], lam) if ode else jnp.zeros(d)
    states, _ = lax.fori_loop(0, n_points - 1, body, (states, inv_0))
    final = {s: x if s in carries_variance else x * s0 for s, x in zip(unique, states)}
    return jnp.stack([final[s] for s in schemes])


@functools.partial(jax.jit, static_argnames=("schemes",),
                   compiler_options={"xla_backend_optimization_level": 1})
def _propagate_tables(lam, s0, tables, n_points, schemes):
    return _propagate(lam, s0, _table_scalars(tables), n_points, schemes)


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
    v = _propagate_tables(jnp.asarray(lam), s0[None], jax.tree.map(lambda x: x[0], tables),
                          jnp.asarray(n_points), schemes=(scheme,))
    return v[0, 0]


def _check_scheme_grid(sde, scheme, n_points, eps):
    check_grid(n_points, eps, float(sde.T))
    check_sde_supports(sde, scheme)
    if scheme == "ddpm":
        check_ddpm_steps(sde, int(n_points), float(eps))


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
    "initial_variance",
    "marginal_spectrum",
    "step_coefficients",
    "w2",
    "w2_along_time",
]
