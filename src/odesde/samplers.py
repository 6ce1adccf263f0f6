"""Fixed-step samplers of the reverse processes, for any score function.

The six schemes of Pierret & Galerne (Sec. 3 of the digest), written once for a generic forward
SDE ``dx = f(t) x dt + g(t) dw`` (:class:`odesde.sde.SDE`), so that the neural chapters use the
same code as the exact Gaussian chapter:

- reverse SDE: Euler–Maruyama ``"em"``, exponential integrator ``"ei"``, DDPM ancestral
  ``"ddpm"``;
- probability-flow ODE: ``"euler"``, ``"heun"``, ``"rk4"``.

Grid convention (all schemes): ``n_points`` grid points, uniform in backward time
``tau_k = k (T - eps) / (n_points - 1)``, so ``n_points - 1`` steps of size
``dt = (T - eps) / (n_points - 1)`` from forward time ``T`` down to forward time ``eps``
(exactly). Coefficients and scores are taken at the left endpoint of each step; Heun's corrector
and RK4's last stage evaluate the score at the right endpoint, RK4's middle stages at the
midpoint. There is no final denoising step.

With the exact linear score ``-x / lambda(t)`` along an eigenvector of the data covariance, each
one-step map below is ``x -> a x + b z`` with the ``(a, b)`` of the digest's Sec. 3 table;
:func:`odesde.gaussian.step_coefficients` holds those closed forms and the tests check that
both agree.

Convention: a score function takes ONE point and a forward time,
``score(x: (d,), t: scalar) -> (d,)``; the samplers ``vmap`` it over samples.
"""

from __future__ import annotations

from typing import Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .sde import SDE

Scheme = Literal["em", "ei", "ddpm", "euler", "heun", "rk4"]
SDE_SCHEMES: tuple[str, ...] = ("em", "ei", "ddpm")
ODE_SCHEMES: tuple[str, ...] = ("euler", "heun", "rk4")
SCHEMES: tuple[str, ...] = SDE_SCHEMES + ODE_SCHEMES

ScoreFn = Callable[[Float[Array, " d"], Float[Array, ""]], Float[Array, " d"]]


def check_scheme(scheme: str, allowed: tuple[str, ...] = SCHEMES) -> str:
    """Return ``scheme`` or raise a ``ValueError`` naming the allowed schemes."""
    if not isinstance(scheme, str) or scheme not in allowed:
        raise ValueError(f"scheme={scheme!r} is not a known scheme: allowed are {allowed}")
    return scheme


def check_grid(n_points: int, eps: float, T: float) -> None:
    """Validate the grid parameters (``n_points >= 2`` integer, ``0 <= eps < T``)."""
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)):
        raise ValueError(f"n_points={n_points!r} must be an integer >= 2 (grid points)")
    if n_points < 2:
        raise ValueError(f"n_points={n_points} must be >= 2: the grid has n_points - 1 steps")
    if not np.isfinite(eps) or not 0.0 <= eps < T:
        raise ValueError(f"eps={eps!r} must satisfy 0 <= eps < T = {T}")


def time_grid(n_points: int, eps: float | Float[Array, ""], T: float) -> Float[Array, " n"]:
    """Forward times ``t_k = T - tau_k`` of the uniform backward grid (digest Sec. 3).

    ``tau_k = k (T - eps) / (n_points - 1)``; the last forward time is set to ``eps`` exactly,
    so that at ``eps = 0`` a zero eigenvalue gives a marginal variance of exactly 0, hence the
    infinite Heun/RK4 errors of the paper.

    Args:
        n_points: ``N``, the number of grid points (``N - 1`` steps). Static.
        eps: truncation time, the forward time of the last point.
        T: horizon of the forward SDE.

    Returns:
        The forward times, shape ``(n_points,)``, decreasing from ``T`` to ``eps``.
    """
    eps = jnp.asarray(eps, dtype=float)
    k = jnp.arange(n_points, dtype=float)
    t = T - k * ((T - eps) / (n_points - 1))
    return t.at[-1].set(eps)


def step_size(n_points: int, eps, T: float):
    """``dt = (T - eps) / (n_points - 1)``, the constant backward step."""
    return (T - eps) / (n_points - 1)


def _drift_at(sde: SDE, t: np.ndarray) -> np.ndarray:
    """``f(t)`` on host times; padded to a multiple of 1024 so its ops compile for one shape."""
    n = t.size
    padded = np.concatenate([t, np.full(-n % 1024, t[0])])
    return np.asarray(sde.drift_coef(jnp.asarray(padded)))[:n]


def check_sde_supports(sde: SDE, scheme: str) -> None:
    """EI and DDPM need a VP-type drift ``f < 0`` (they integrate or discretise ``e^{int f}``)."""
    if scheme in ("ei", "ddpm"):
        f = _drift_at(sde, np.linspace(0.0, float(sde.T), 17))
        if not np.all(f < 0):
            raise ValueError(
                f"scheme={scheme!r} needs a forward drift f(t) < 0 on [0, T] (VP-type SDE); "
                f"{type(sde).__name__} has f = {f.min():g} .. {f.max():g}. Use 'em' or an ODE "
                "scheme instead"
            )


def check_ddpm_steps(sde: SDE, n_points: int, eps: float) -> None:
    """DDPM's discrete rate ``beta^D_k = -2 f(t_k) dt`` must stay below 1 (else NaN)."""
    T = float(sde.T)
    t = T - np.arange(n_points - 1) * step_size(n_points, eps, T)
    beta_d = -2.0 * _drift_at(sde, t) * step_size(n_points, eps, T)
    if beta_d.max() >= 1.0:
        raise ValueError(
            f"scheme='ddpm' with n_points={n_points}, eps={eps}: the discrete rate "
            f"beta^D = -2 f dt reaches {beta_d.max():.3g} >= 1, so 1 / sqrt(1 - beta^D) is "
            "undefined; use more grid points (Pierret & Galerne: n_points - 1 > 20 (T - eps))"
        )


def reverse_step(
    sde: SDE,
    score: ScoreFn,
    scheme: str,
    x: Float[Array, " d"],
    t: Float[Array, ""],
    t_next: Float[Array, ""],
    dt: Float[Array, ""],
    z: Float[Array, " d"],
) -> Float[Array, " d"]:
    """One step of ``scheme`` from forward time ``t`` to ``t_next = t - dt`` (one point).

    Pierret & Galerne, Sec. 3 table, for a generic ``dx = f x dt + g dw``; ``F = -f(t)``,
    ``c = g(t)^2 / (2 F)`` (the stationary variance, 1 for the paper's VP SDE):

    - em: ``x + dt (-f x + g^2 s) + sqrt(dt) g z``;
    - ei: ``e^eta x + (e^eta - 1) 2 c s + sqrt(c (e^{2 eta} - 1)) z`` with
      ``eta = log alpha(t_next) - log alpha(t)``, the exact integral of ``-f`` over the step
      (score frozen at ``t``; exact when ``c`` is constant, as for every VP SDE);
    - ddpm: ``(x + g^2 dt s) / sqrt(1 - beta^D) + sqrt(g^2 dt) z`` with
      ``beta^D = 2 F dt`` (``= dt g^2`` for the paper's VP SDE: the code's factor 2);
    - euler / heun / rk4: the probability-flow velocity ``-f x + g^2 s / 2`` (backward time)
      with Euler, Heun (trapezoid corrector at ``t_next``) or classical RK4 (midpoint
      ``t - dt/2``).

    Args:
        sde: the forward SDE.
        score: ``score(x, t)`` for one point ``x`` at forward time ``t``.
        scheme: one of :data:`SCHEMES`.
        x: current state, shape ``(d,)``.
        t: current forward time (left endpoint).
        t_next: forward time after the step (right endpoint).
        dt: the backward step ``t - t_next``.
        z: standard normal noise, shape ``(d,)`` (ignored by ODE schemes).

    Returns:
        The state at ``t_next``.
    """
    f = sde.drift_coef(t)
    g2 = sde.diffusion(t) ** 2
    if scheme == "em":
        return x + dt * (-f * x + g2 * score(x, t)) + jnp.sqrt(dt * g2) * z
    if scheme == "ei":
        eta = sde.log_mean_scale(t_next) - sde.log_mean_scale(t)
        c = g2 / (-2.0 * f)
        return (
            jnp.exp(eta) * x
            + jnp.expm1(eta) * 2.0 * c * score(x, t)
            + jnp.sqrt(c * jnp.expm1(2.0 * eta)) * z
        )
    if scheme == "ddpm":
        beta_d = -2.0 * f * dt
        return (x + g2 * dt * score(x, t)) / jnp.sqrt(1.0 - beta_d) + jnp.sqrt(g2 * dt) * z

    def velocity(y, s):
        # Probability-flow ODE in backward time: dy/dtau = -(f y - g^2 s / 2).
        return -sde.drift_coef(s) * y + 0.5 * sde.diffusion(s) ** 2 * score(y, s)

    if scheme == "euler":
        return x + dt * velocity(x, t)
    if scheme == "heun":
        k1 = velocity(x, t)
        k2 = velocity(x + dt * k1, t_next)
        return x + 0.5 * dt * (k1 + k2)
    if scheme == "rk4":
        t_mid = t - 0.5 * dt
        k1 = velocity(x, t)
        k2 = velocity(x + 0.5 * dt * k1, t_mid)
        k3 = velocity(x + 0.5 * dt * k2, t_mid)
        k4 = velocity(x + dt * k3, t_next)
        return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    raise ValueError(f"scheme={scheme!r} is not a known scheme: allowed are {SCHEMES}")


def sample(
    sde: SDE,
    score: ScoreFn,
    scheme: Scheme,
    *,
    n_points: int,
    eps: float,
    key: PRNGKeyArray | None = None,
    x_T: Float[ArrayLike, "m d"] | None = None,
    n_samples: int | None = None,
    dim: int | None = None,
    return_trajectory: bool = False,
) -> Float[Array, "m d"] | tuple[Float[Array, "m d"], Float[Array, "n m d"]]:
    """Run ``scheme`` from forward time ``T`` to ``eps`` on ``n_points`` grid points.

    Pierret & Galerne, Sec. 3 (grid and schemes); see :func:`reverse_step`.

    Args:
        sde: the forward SDE (any :class:`odesde.sde.SDE`; EI and DDPM need ``f < 0``).
        score: ``score(x: (d,), t: scalar) -> (d,)``, evaluated at forward times.
        scheme: ``"em"``, ``"ei"``, ``"ddpm"``, ``"euler"``, ``"heun"`` or ``"rk4"``.
        n_points: grid points ``N`` (``N - 1`` steps).
        eps: truncation time (forward time of the output), ``0 <= eps < T``.
        key: PRNG key for the initial draw (when ``x_T`` is not given) and the SDE noise.
        x_T: initial states, shape ``(m, d)``; if omitted, ``n_samples`` draws of
            ``N(0, prior_variance I)`` in dimension ``dim``.
        n_samples: number of samples when ``x_T`` is omitted.
        dim: dimension when ``x_T`` is omitted.
        return_trajectory: also return the states at every grid point.

    Returns:
        The samples at forward time ``eps``, shape ``(m, d)``; with ``return_trajectory``,
        also the states at all ``N`` grid points, shape ``(N, m, d)``.

    Raises:
        FloatingPointError: a state became NaN or infinite; the message names the first step.
    """
    check_scheme(scheme)
    T = float(sde.T)
    check_grid(n_points, eps, T)
    check_sde_supports(sde, scheme)
    if scheme == "ddpm":
        check_ddpm_steps(sde, n_points, eps)
    stochastic = scheme in SDE_SCHEMES
    if x_T is None:
        if n_samples is None or dim is None:
            raise ValueError("give either x_T (shape (m, d)) or both n_samples and dim")
        if key is None:
            raise ValueError("key is required to draw the initial samples (x_T not given)")
        key, init_key = jax.random.split(key)
        x_T = jnp.sqrt(sde.prior_variance) * jax.random.normal(
            init_key, (int(n_samples), int(dim)), dtype=float
        )
    else:
        x_T = jnp.asarray(x_T, dtype=float)
        if x_T.ndim != 2:
            raise ValueError(f"x_T must have shape (m, d), got shape {x_T.shape}")
    if stochastic and key is None:
        raise ValueError(f"scheme={scheme!r} is stochastic: key is required")
    if key is None:
        key = jax.random.key(0)  # unused by the ODE schemes; keeps one compiled path
    x, path, first_bad = _run(sde, score, scheme, n_points, jnp.asarray(eps, dtype=float), x_T,
                              key, return_trajectory)
    first_bad = int(first_bad)
    if first_bad >= 0:
        t_bad = float(time_grid(n_points, eps, T)[first_bad + 1])
        raise FloatingPointError(
            f"scheme={scheme!r}: non-finite samples after step {first_bad + 1} of "
            f"{n_points - 1} (forward time {t_bad:.6g}); e.g. a score that diverges at eps=0"
        )
    return (x, path) if return_trajectory else x


@eqx.filter_jit
def _run(sde, score, scheme, n_points, eps, x_T, key, return_trajectory):
    """Final states, the trajectory (or None) and the first step with a non-finite state."""
    # filter_jit: a neural score's arrays are traced, a plain function is static.
    T = float(sde.T)
    t = time_grid(n_points, eps, T)
    dt = step_size(n_points, eps, T)
    keys = jax.random.split(key, n_points - 1)
    batched = jax.vmap(
        lambda x, tk, tn, z: reverse_step(sde, score, scheme, x, tk, tn, dt, z),
        in_axes=(0, None, None, 0),
    )

    def body(carry, inputs):
        x, first_bad = carry
        tk, tn, key_k, step = inputs
        if scheme in SDE_SCHEMES:
            z = jax.random.normal(key_k, x.shape, dtype=x.dtype)
        else:
            z = jnp.zeros_like(x)
        x = batched(x, tk, tn, z)
        bad = (first_bad < 0) & ~jnp.all(jnp.isfinite(x))
        first_bad = jnp.where(bad, step, first_bad)
        return (x, first_bad), (x if return_trajectory else None)

    steps = jnp.arange(n_points - 1)
    (x, first_bad), path = lax.scan(body, (x_T, jnp.asarray(-1, dtype=steps.dtype)),
                                    (t[:-1], t[1:], keys, steps))
    if return_trajectory:
        path = jnp.concatenate([x_T[None], path], axis=0)
    return x, path, first_bad
