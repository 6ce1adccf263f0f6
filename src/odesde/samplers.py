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

Non-uniform grids: :func:`sample_on_grid` runs the same schemes on any decreasing grid of forward
times, optionally without noise on the last stochastic step; :func:`deveney_time_grid` is the
grid of Deveney et al.'s samplers (790 steps of ``h = 0.0125`` from ``T = 10``, then 100 of
``h / 10`` down to 0; digest Sec. 6), with which ``"em"`` (last step drift-only) and ``"euler"``
are the paper's two samplers.

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


def deveney_time_grid(
    T: float = 10.0, h: float = 0.0125, coarse: int = 790, fine: int = 100
) -> np.ndarray:
    """The grid of Deveney et al.'s samplers (digest Sec. 6), as ``coarse + fine + 1`` points.

    ``coarse`` steps of ``h`` from ``T`` (``10, ..., 0.1375`` are the times passed to the
    score), then ``fine`` steps of ``h / 10`` (``0.125, ..., 0.00125``) down to ``T - h coarse -
    h fine / 10``, which is 0 for the defaults (set exactly). The score never sees ``t = 0``.
    The evaluation times equal :func:`odesde.linear_gap.paper_grid`'s bit for bit.

    Args:
        T: the start (forward time).
        h: the coarse step.
        coarse: number of coarse steps.
        fine: number of fine steps of ``h / 10``.

    Returns:
        The forward times, shape ``(coarse + fine + 1,)``, decreasing.
    """
    for name, value in (("coarse", coarse), ("fine", fine)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"deveney_time_grid: {name}={value!r} must be an integer >= 0")
    if coarse + fine < 1:
        raise ValueError("deveney_time_grid: coarse + fine must be >= 1 (at least one step)")
    if not h > 0:
        raise ValueError(f"deveney_time_grid: h={h!r} must be > 0")
    t1 = T - h * np.arange(coarse)
    t_mid = T - h * coarse
    t2 = t_mid - (h / 10) * np.arange(fine)
    end = t_mid - (h / 10) * fine
    if end < -1e-9 * T:
        raise ValueError(
            f"deveney_time_grid: the grid ends at t = {end:g} < 0 (T={T}, h={h}, coarse={coarse}, "
            f"fine={fine})"
        )
    end = 0.0 if abs(end) <= 1e-9 * T else end
    return np.concatenate([t1, t2, [end]])


def check_times(times) -> np.ndarray:
    """Validate a sampler grid: a 1-D, finite, strictly decreasing array of >= 2 forward times
    ``>= 0``. Returns it as float64."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"times must be a 1-D array of >= 2 forward times, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("times must be finite")
    if not np.all(np.diff(t) < 0):
        k = int(np.argmax(np.diff(t) >= 0))
        raise ValueError(
            f"times must be strictly decreasing (forward time runs down to the data); "
            f"times[{k}] = {t[k]:g} <= times[{k + 1}] = {t[k + 1]:g}"
        )
    if t[-1] < 0:
        raise ValueError(f"times must be >= 0, got times[-1] = {t[-1]:g}")
    return t


def _check_ddpm_rates(sde: SDE, t_left: np.ndarray, dt: np.ndarray, where: str) -> None:
    beta_d = -2.0 * _drift_at(sde, t_left) * dt
    if beta_d.max() >= 1.0:
        raise ValueError(
            f"scheme='ddpm' {where}: the discrete rate beta^D = -2 f dt reaches "
            f"{beta_d.max():.3g} >= 1, so 1 / sqrt(1 - beta^D) is undefined; use smaller steps"
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
    key, x_T = _initial_states(sde, key, x_T, n_samples, dim)
    if stochastic and key is None:
        raise ValueError(f"scheme={scheme!r} is stochastic: key is required")
    if key is None:
        key = jax.random.key(0)  # unused by the ODE schemes; keeps one compiled path
    t = time_grid(n_points, eps, T)
    dt = jnp.full((n_points - 1,), step_size(n_points, jnp.asarray(eps, dtype=float), T))
    noise = jnp.ones((n_points - 1,), dtype=float)
    return _finish(_run(sde, score, scheme, t, dt, noise, x_T, key, return_trajectory), t,
                   scheme, return_trajectory, "e.g. a score that diverges at eps=0")


def _finish(result, t, scheme, return_trajectory, hint):
    x, path, first_bad = result
    first_bad = int(first_bad)
    if first_bad >= 0:
        t_bad = float(t[first_bad + 1])
        raise FloatingPointError(
            f"scheme={scheme!r}: non-finite samples after step {first_bad + 1} of "
            f"{len(t) - 1} (forward time {t_bad:.6g}); {hint}"
        )
    return (x, path) if return_trajectory else x


def _initial_states(sde, key, x_T, n_samples, dim):
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
    return key, x_T


def sample_on_grid(
    sde: SDE,
    score: ScoreFn,
    scheme: Scheme,
    *,
    times: Float[ArrayLike, " n"],
    key: PRNGKeyArray | None = None,
    x_T: Float[ArrayLike, "m d"] | None = None,
    n_samples: int | None = None,
    dim: int | None = None,
    last_noise: bool = True,
    return_trajectory: bool = False,
) -> Float[Array, "m d"] | tuple[Float[Array, "m d"], Float[Array, "n m d"]]:
    """Run ``scheme`` on an arbitrary decreasing grid of forward times.

    Step ``k`` goes from ``times[k]`` to ``times[k + 1]`` with ``dt = times[k] - times[k + 1]``,
    the score taken at ``times[k]`` (the time *before* the update) as in :func:`reverse_step`.
    With :func:`deveney_time_grid`, ``scheme="em"`` and ``last_noise=False`` this is Deveney
    et al.'s reverse-SDE sampler and ``scheme="euler"`` their probability-flow sampler
    (digest Sec. 6). On a uniform grid with ``last_noise=True`` it is :func:`sample`.

    Args:
        sde: the forward SDE.
        score: ``score(x: (d,), t: scalar) -> (d,)``.
        scheme: one of :data:`SCHEMES`.
        times: forward times, strictly decreasing, ``times[0]`` the start (at most ``T``),
            ``times[-1] >= 0`` the output time.
        key: PRNG key for the initial draw (when ``x_T`` is not given) and the SDE noise.
        x_T: initial states ``(m, d)``; if omitted, ``n_samples`` draws of the prior in ``dim``
            dimensions.
        n_samples: number of samples when ``x_T`` is omitted.
        dim: dimension when ``x_T`` is omitted.
        last_noise: add the noise on the last step of a stochastic scheme (``False``: the last
            step is drift-only, as in Deveney et al.'s EM sampler).
        return_trajectory: also return the states at every grid point.

    Returns:
        The samples at ``times[-1]``; with ``return_trajectory`` also the states at every grid
        point, shape ``(len(times), m, d)``.

    Raises:
        FloatingPointError: a state became NaN or infinite; the message names the first step.
    """
    check_scheme(scheme)
    T = float(sde.T)
    t = check_times(times)
    if t[0] > T * (1 + 1e-12):
        raise ValueError(f"times[0] = {t[0]:g} is beyond the horizon T = {T:g} of the SDE")
    check_sde_supports(sde, scheme)
    dt_host = -np.diff(t)
    if scheme == "ddpm":
        _check_ddpm_rates(sde, t[:-1], dt_host, "on this grid")
    stochastic = scheme in SDE_SCHEMES
    key, x_T = _initial_states(sde, key, x_T, n_samples, dim)
    if stochastic and key is None:
        raise ValueError(f"scheme={scheme!r} is stochastic: key is required")
    if key is None:
        key = jax.random.key(0)  # unused by the ODE schemes; keeps one compiled path
    noise = np.ones(t.size - 1)
    if not last_noise:
        noise[-1] = 0.0
    return _finish(
        _run(sde, score, scheme, jnp.asarray(t), jnp.asarray(dt_host), jnp.asarray(noise), x_T,
             key, return_trajectory),
        t, scheme, return_trajectory, "e.g. a score that diverges near t = 0",
    )


@eqx.filter_jit
def _run(sde, score, scheme, t, dt, noise, x_T, key, return_trajectory):
    """Final states, the trajectory (or None) and the first step with a non-finite state.

    ``t``: the ``n + 1`` grid times; ``dt``: the ``n`` step sizes; ``noise``: ``n`` factors of
    the Gaussian increments (1, or 0 for a drift-only step).
    """
    # filter_jit: a neural score's arrays are traced, a plain function is static.
    n = dt.shape[0]
    keys = jax.random.split(key, n)
    batched = jax.vmap(
        lambda x, tk, tn, h, z: reverse_step(sde, score, scheme, x, tk, tn, h, z),
        in_axes=(0, None, None, None, 0),
    )

    def body(carry, inputs):
        x, first_bad = carry
        tk, tn, h, c, key_k, step = inputs
        if scheme in SDE_SCHEMES:
            z = c * jax.random.normal(key_k, x.shape, dtype=x.dtype)
        else:
            z = jnp.zeros_like(x)
        x = batched(x, tk, tn, h, z)
        bad = (first_bad < 0) & ~jnp.all(jnp.isfinite(x))
        first_bad = jnp.where(bad, step, first_bad)
        return (x, first_bad), (x if return_trajectory else None)

    steps = jnp.arange(n)
    (x, first_bad), path = lax.scan(body, (x_T, jnp.asarray(-1, dtype=steps.dtype)),
                                    (t[:-1], t[1:], dt, noise, keys, steps))
    if return_trajectory:
        path = jnp.concatenate([x_T[None], path], axis=0)
    return x, path, first_bad
