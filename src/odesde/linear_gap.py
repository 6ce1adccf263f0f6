"""The exact linear-Gaussian ODE–SDE gap test (Deveney et al. digest, Sec. 8.2; Companion).

The book's own construction, not the paper's theorem. The OU process of Deveney et al.
(``dx = -x dt + dw``, ``T = 10``) with Gaussian data ``N(m0, Sigma0)`` and a *model* potential
quadratic in ``x``,

    phi(x, t) = -x^T A(t) x / 2 + b(t)^T x + c(t),     s = grad phi = -A x + b,

with ``A = Sigma_t^{-1} + eta e^{-2t} K`` and ``b = A* m_t + eta e^{-2t} k`` (the exact score
plus a perturbation of amplitude ``eta``). The reverse SDE and the probability-flow ODE are
linear, so their laws are Gaussian at every time and everything is exact:

- :func:`reverse_moments`: means and covariances of ``p^S`` and ``p^O`` (matrix ODEs, diffrax);
- :func:`gap_and_bound`: the exact ``W2`` gap at ``t = 0`` and the reconstructed Grönwall
  bound (digest Sec. 8.1 (b)) in its one-sided and Lipschitz forms;
- :func:`residual_coefficients`, :func:`residual_second_moment`, :func:`box_residual_second_moment`,
  :func:`paper_residual_metric`: the FP residual ``R = -x^T Q x / 2 + l^T x + kappa`` and its
  norms in closed form;
- :func:`mismatch_riccati`: the residual-driven Riccati equations of the mismatch
  ``grad e = -E x + beta`` (digest Sec. 8.1 (c), 8.2);
- :func:`discrete_moments`: the exact Euler–Maruyama and Euler recursions on any time grid
  (e.g. :func:`paper_grid`, the 790 + 100 steps of the paper's samplers);
- :func:`diagonal_closed_form`: the per-coordinate closed forms for diagonal models.

All arrays are float64 (``odesde`` enables ``jax_enable_x64``).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import samplers

__all__ = [
    "LinearGaussianModel",
    "Gaussian",
    "Moments",
    "GapResult",
    "recommended_model",
    "random_model",
    "true_prior",
    "standard_prior",
    "residual_coefficients",
    "residual",
    "residual_second_moment",
    "box_residual_second_moment",
    "paper_residual_metric",
    "reverse_moments",
    "bures_w2_squared",
    "gap_and_bound",
    "mismatch_riccati",
    "paper_grid",
    "uniform_grid",
    "discrete_moments",
    "diagonal_closed_form",
]

T_PAPER = 10.0
EPS_PAPER = 1e-5
HALF_WIDTH_PAPER = 3.5


def _noise_variance(t):
    # sigma_t^2 = (1 - e^{-2t}) / 2 with expm1 (digest, Pitfalls).
    return -0.5 * jnp.expm1(-2.0 * t)


class LinearGaussianModel(eqx.Module):
    """A quadratic potential for Gaussian data under the OU process (digest Sec. 8.2).

    ``A(t) = Sigma_t^{-1} + eta e^{-2t} K``, ``b(t) = Sigma_t^{-1} m_t + eta e^{-2t} k`` with
    ``m_t = e^{-t} m0`` and ``Sigma_t = e^{-2t} Sigma0 + sigma_t^2 I``. ``eta = 0`` gives the
    exact score. Build it with :func:`recommended_model` or :func:`random_model` (they
    validate their input).
    """

    m0: Float[Array, " d"]
    Sigma0: Float[Array, "d d"]
    K: Float[Array, "d d"]
    k: Float[Array, " d"]
    eta: Float[Array, ""]

    @property
    def dim(self) -> int:
        return self.m0.shape[-1]

    def true_mean(self, t) -> Float[Array, " d"]:
        """``m_t = e^{-t} m0``."""
        return jnp.exp(-t) * self.m0

    def true_cov(self, t) -> Float[Array, "d d"]:
        """``Sigma_t = e^{-2t} Sigma0 + sigma_t^2 I``."""
        return jnp.exp(-2.0 * t) * self.Sigma0 + _noise_variance(t) * jnp.eye(self.dim)

    def A(self, t) -> Float[Array, "d d"]:
        """The model's precision ``A(t) = Sigma_t^{-1} + eta e^{-2t} K``."""
        S = self.true_cov(t)
        A_star = jnp.linalg.solve(S, jnp.eye(self.dim))
        A = A_star + self.eta * jnp.exp(-2.0 * t) * self.K
        return 0.5 * (A + A.T)

    def b(self, t) -> Float[Array, " d"]:
        """``b(t) = Sigma_t^{-1} m_t + eta e^{-2t} k``."""
        b_star = jnp.linalg.solve(self.true_cov(t), self.true_mean(t))
        return b_star + self.eta * jnp.exp(-2.0 * t) * self.k

    def score(self, x: Float[Array, " d"], t) -> Float[Array, " d"]:
        """``s(x, t) = -A(t) x + b(t)`` (project convention: one point, forward time)."""
        return -self.A(t) @ x + self.b(t)

    def c(self, t) -> Float[Array, ""]:
        """The normalised gauge: ``e^phi`` is the density ``N(A^{-1} b, A^{-1})``."""
        A, b = self.A(t), self.b(t)
        m = jnp.linalg.solve(A, b)
        _, logdet = jnp.linalg.slogdet(A)
        return -0.5 * m @ A @ m - 0.5 * self.dim * math.log(2 * math.pi) + 0.5 * logdet

    def potential(self, x: Float[Array, " d"], t) -> Float[Array, ""]:
        """``phi(x, t) = -x^T A x / 2 + b^T x + c(t)`` in the normalised gauge."""
        return -0.5 * x @ self.A(t) @ x + self.b(t) @ x + self.c(t)


def _as_float(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr!r}")
    return arr


def make_model(m0, Sigma0, K, k, eta: float) -> LinearGaussianModel:
    """A validated :class:`LinearGaussianModel`.

    Args:
        m0: data mean, ``(d,)``.
        Sigma0: data covariance, symmetric positive definite ``(d, d)``.
        K: symmetric perturbation of the precision, ``(d, d)``.
        k: perturbation of ``b``, ``(d,)``.
        eta: perturbation amplitude (finite; ``A`` must stay positive definite, which is
            checked on a time grid).

    Returns:
        The model.
    """
    m0 = np.atleast_1d(np.asarray(m0, dtype=np.float64))
    if m0.ndim != 1 or m0.size < 1:
        raise ValueError(f"m0 must be a non-empty vector, got shape {m0.shape}")
    d = m0.size
    Sigma0 = _as_float("Sigma0", Sigma0, (d, d))
    K = _as_float("K", K, (d, d))
    k = _as_float("k", k, (d,))
    if not np.allclose(Sigma0, Sigma0.T, atol=1e-12) or np.linalg.eigvalsh(Sigma0).min() <= 0:
        raise ValueError("Sigma0 must be symmetric positive definite")
    if not np.allclose(K, K.T, atol=1e-12):
        raise ValueError("K must be symmetric")
    if isinstance(eta, bool) or not np.isfinite(eta):
        raise ValueError(f"eta={eta!r} must be a finite float")
    # A(t) = Sigma_t^{-1} + eta e^{-2t} K on a time grid, in NumPy (no compilation).
    ts = np.concatenate([[0.0], np.geomspace(1e-6, T_PAPER, 60)])
    lam_min = min(
        np.linalg.eigvalsh(np.linalg.inv(np.exp(-2 * t) * Sigma0 - 0.5 * np.expm1(-2 * t) * np.eye(d))
                           + eta * np.exp(-2 * t) * K)[0]
        for t in ts
    )
    if lam_min <= 0:
        raise ValueError(
            f"eta={eta!r}: A(t) = Sigma_t^-1 + eta e^(-2t) K is not positive definite "
            f"(min eigenvalue {lam_min:.3g}); use a smaller |eta|"
        )
    return LinearGaussianModel(jnp.asarray(m0), jnp.asarray(Sigma0), jnp.asarray(K),
                               jnp.asarray(k), jnp.asarray(float(eta)))


def recommended_model(eta: float) -> LinearGaussianModel:
    """The digest's recommended family (Sec. 8.2): ``d = 2``, ``m0 = (1, -0.5)``,
    ``Sigma0 = [[.25, .08], [.08, .06]]``, ``K = [[2, 1], [1, -1]]``, ``k = (.5, .5)``."""
    return make_model([1.0, -0.5], [[0.25, 0.08], [0.08, 0.06]], [[2.0, 1.0], [1.0, -1.0]],
                      [0.5, 0.5], eta)


def random_model(dim: int, eta: float, *, key: PRNGKeyArray) -> LinearGaussianModel:
    """A family in dimension ``dim`` in the spirit of the recommended one (Companion).

    ``Sigma0 = Q diag(l) Q^T`` with ``l`` log-uniform in ``[0.03, 0.3]`` and ``Q`` a random
    rotation; ``m0 ~ N(0, 0.5 I)``; ``K = (G + G^T) / 2`` with ``G`` standard normal scaled by
    ``1 / sqrt(dim)`` so that ``|K|`` stays of order one; ``k ~ N(0, 0.25 I)``. All from ``key``.
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim={dim!r} must be an integer >= 1")
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    lam = jnp.exp(jax.random.uniform(k1, (dim,), minval=math.log(0.03), maxval=math.log(0.3)))
    Q = jax.random.orthogonal(k2, dim) if dim > 1 else jnp.ones((1, 1))
    G = jax.random.normal(k4, (dim, dim)) / math.sqrt(dim)
    return make_model(
        math.sqrt(0.5) * jax.random.normal(k3, (dim,)),
        np.asarray(Q @ jnp.diag(lam) @ Q.T),
        np.asarray(0.5 * (G + G.T)),
        0.5 * np.asarray(jax.random.normal(k5, (dim,))),
        eta,
    )


class Gaussian(NamedTuple):
    """A Gaussian law ``N(mean, cov)``."""

    mean: Float[Array, " d"]
    cov: Float[Array, "d d"]


def true_prior(model: LinearGaussianModel, T: float = T_PAPER) -> Gaussian:
    """``p_T = N(m_T, Sigma_T)``: the exact prior (zero-gap checks, the one-sided bound)."""
    return Gaussian(model.true_mean(jnp.asarray(T)), model.true_cov(jnp.asarray(T)))


def standard_prior(model: LinearGaussianModel) -> Gaussian:
    """``N(0, I/2)``, the stationary law the paper's samplers start from."""
    return Gaussian(jnp.zeros(model.dim), 0.5 * jnp.eye(model.dim))


# --- the residual --------------------------------------------------------------------------


def residual_coefficients(model: LinearGaussianModel, t) -> tuple[Array, Array, Array]:
    """``(Q, l, kappa)`` of ``R = -x^T Q x / 2 + l^T x + kappa`` (digest Sec. 8.2).

    ``Q = A' - 2A + A^2``, ``l = b' - b + A b`` and, in the normalised gauge
    (``m = A^{-1} b``), ``kappa = tr(A^{-1} Q) / 2 + m^T Q m / 2 - m^T l``, so that ``R`` has
    zero mean under ``e^phi``. Time derivatives by forward-mode autodiff.

    Args:
        model: the model.
        t: forward time.

    Returns:
        ``Q`` ``(d, d)``, ``l`` ``(d,)``, ``kappa`` scalar.
    """
    t = jnp.asarray(t, dtype=float)
    A, A_dot = jax.jvp(model.A, (t,), (jnp.ones_like(t),))
    b, b_dot = jax.jvp(model.b, (t,), (jnp.ones_like(t),))
    Q = A_dot - 2.0 * A + A @ A
    ell = b_dot - b + A @ b
    m = jnp.linalg.solve(A, b)
    kappa = 0.5 * jnp.trace(jnp.linalg.solve(A, Q)) + 0.5 * m @ Q @ m - m @ ell
    return Q, ell, kappa


def residual(model: LinearGaussianModel, x: Float[Array, " d"], t) -> Float[Array, ""]:
    """``R(x, t)`` from :func:`residual_coefficients` (closed form)."""
    Q, ell, kappa = residual_coefficients(model, t)
    return -0.5 * x @ Q @ x + ell @ x + kappa


def residual_second_moment(Q, ell, kappa, mean, cov) -> Float[Array, ""]:
    """``E R^2`` under ``N(mean, cov)`` (digest Sec. 8.2, residual norms).

    ``E R^2 = (E R)^2 + tr(QPQP) / 2 + v^T P v`` with ``v = l - Q mu`` and
    ``E R = -(tr QP + mu^T Q mu) / 2 + l^T mu + kappa``.
    """
    QP = Q @ cov
    mean_r = -0.5 * (jnp.trace(QP) + mean @ Q @ mean) + ell @ mean + kappa
    v = ell - Q @ mean
    return mean_r**2 + 0.5 * jnp.trace(QP @ QP) + v @ cov @ v


def box_residual_second_moment(Q, ell, kappa, half_width: float = HALF_WIDTH_PAPER):
    """``E R^2`` for ``x`` uniform on ``[-L, L]^d`` (digest Sec. 8.2).

    With ``m2 = L^2 / 3``, ``m4 = L^4 / 5``, ``D = sum_i Q_ii^2``:
    ``[m4 D + m2^2 ((tr Q)^2 - D) + 2 m2^2 (|Q|_F^2 - D)] / 4 + m2 |l|^2 + kappa^2
    - kappa m2 tr Q``.
    """
    m2, m4 = half_width**2 / 3.0, half_width**4 / 5.0
    D = jnp.sum(jnp.diag(Q) ** 2)
    trQ = jnp.trace(Q)
    quartic = 0.25 * (m4 * D + m2**2 * (trQ**2 - D) + 2.0 * m2**2 * (jnp.sum(Q**2) - D))
    return quartic + m2 * ell @ ell + kappa**2 - kappa * m2 * trQ


def _gauss_legendre(breaks: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    nodes, weights = [], []
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        nodes.append(0.5 * (hi - lo) * x + 0.5 * (hi + lo))
        weights.append(0.5 * (hi - lo) * w)
    return np.concatenate(nodes), np.concatenate(weights)


def paper_residual_metric(
    model: LinearGaussianModel,
    *,
    eps: float = EPS_PAPER,
    T: float = T_PAPER,
    half_width: float = HALF_WIDTH_PAPER,
    nodes_per_piece: int = 48,
) -> Float[Array, ""]:
    """The paper's residual metric ``1/(T - eps) int_eps^T E_box R^2 dt`` (digest Sec. 3, 8.2).

    The collocation law of the paper's training (``t`` uniform on ``[eps, T]``, ``x`` uniform
    on ``[-L, L]^d``) in closed form in ``x`` and Gauss–Legendre in ``t`` (pieces split at
    0.01, 0.1, 1 and 3, where the integrand varies fastest).
    """
    if not 0 <= eps < T:
        raise ValueError(f"eps={eps!r} must satisfy 0 <= eps < T = {T}")
    if not half_width > 0:
        raise ValueError(f"half_width={half_width!r} must be > 0")
    breaks = np.unique(np.concatenate([[eps], [b for b in (0.01, 0.1, 1.0, 3.0) if eps < b < T], [T]]))
    ts, ws = _gauss_legendre(breaks, nodes_per_piece)
    values = jax.vmap(
        lambda t: box_residual_second_moment(*residual_coefficients(model, t), half_width)
    )(jnp.asarray(ts))
    return jnp.sum(jnp.asarray(ws) * values) / (T - eps)


# --- continuous reverse dynamics -------------------------------------------------------------


class Moments(NamedTuple):
    """Means and covariances of ``p^S`` (reverse SDE) and ``p^O`` (probability-flow ODE)."""

    t: Float[Array, " n"]
    mean_sde: Float[Array, "n d"]
    cov_sde: Float[Array, "n d d"]
    mean_ode: Float[Array, "n d"]
    cov_ode: Float[Array, "n d d"]


class GapResult(NamedTuple):
    """The exact gap at ``t = 0`` and the reconstructed bounds on ``W2`` (not squared)."""

    w2_squared: float
    bound_one_sided: float
    bound_lipschitz: float

    @property
    def w2(self) -> float:
        return math.sqrt(max(self.w2_squared, 0.0))

    @property
    def tightness(self) -> float:
        """``bound_one_sided / W2`` (>= 1 when the bound holds)."""
        return self.bound_one_sided / self.w2 if self.w2 > 0 else math.inf


def _solve(vector_field, y0, T: float, t_out, rtol: float, atol: float):
    """Integrate in backward time ``tau = T - t`` from ``tau = 0``; save at forward times."""
    t_out = np.asarray(t_out, dtype=np.float64)  # concrete: it fixes the span and saves
    term = diffrax.ODETerm(lambda tau, y, args: vector_field(T - tau, y))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=0.0, t1=float(T) - float(np.min(t_out)), dt0=1e-3, y0=y0,
        saveat=diffrax.SaveAt(ts=jnp.asarray(T - t_out)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=200_000,
    )
    return sol.ys


def _check_times(t_out, T: float) -> np.ndarray:
    t = np.atleast_1d(np.asarray(t_out, dtype=np.float64))
    if t.ndim != 1 or np.any(np.diff(t) >= 0) or t[0] > T or t[-1] < 0:
        raise ValueError(
            f"t_out must be strictly decreasing forward times in [0, T = {T}], got {t_out!r}"
        )
    return t


def reverse_moments(
    model: LinearGaussianModel,
    prior: Gaussian,
    t_out: ArrayLike = (0.0,),
    *,
    T: float = T_PAPER,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> Moments:
    """Moments of the reverse SDE and probability-flow ODE laws (digest Sec. 8.2, Moments).

    From ``t = T`` (both ``N(prior.mean, prior.cov)``) down to the times ``t_out``:
    ``mu_S' = (A - I) mu_S - b``, ``P_S' = (A - I) P_S + P_S (A - I) - I``,
    ``mu_O' = (A/2 - I) mu_O - b/2``, ``P_O' = (A/2 - I) P_O + P_O (A/2 - I)`` (``'`` is
    ``d/dt``), solved with diffrax (Tsit5, tight tolerances).

    Args:
        model: the linear score.
        prior: the common law at ``T``.
        t_out: strictly decreasing forward times in ``[0, T]``.
        T: horizon.
        rtol, atol: tolerances of the adaptive solver.

    Returns:
        :class:`Moments` at ``t_out``.
    """
    t_out = _check_times(t_out, T)
    I = jnp.eye(model.dim)

    def field(t, y):
        mS, PS, mO, PO = y
        A, b = model.A(t), model.b(t)
        dmS = (A - I) @ mS - b
        dPS = (A - I) @ PS + PS @ (A - I) - I
        dmO = (0.5 * A - I) @ mO - 0.5 * b
        dPO = (0.5 * A - I) @ PO + PO @ (0.5 * A - I)
        return tuple(-v for v in (dmS, dPS, dmO, dPO))  # d/dtau = -d/dt

    y0 = (prior.mean, prior.cov, prior.mean, prior.cov)
    mS, PS, mO, PO = _solve(field, y0, T, t_out, rtol, atol)
    return Moments(jnp.asarray(t_out), mS, PS, mO, PO)


def _sqrtm_psd(P: Float[Array, "d d"]) -> Float[Array, "d d"]:
    lam, V = jnp.linalg.eigh(0.5 * (P + P.T))
    return (V * jnp.sqrt(jnp.clip(lam, 0.0))) @ V.T


def bures_w2_squared(mean1, cov1, mean2, cov2) -> Float[Array, ""]:
    """``W2^2 = |m1 - m2|^2 + tr(P1 + P2 - 2 (P1^1/2 P2 P1^1/2)^1/2)`` (symmetric eigh roots)."""
    r1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(r1 @ cov2 @ r1)
    diff = mean1 - mean2
    return diff @ diff + jnp.trace(cov1) + jnp.trace(cov2) - 2.0 * jnp.trace(cross)


def _mismatch_norm(model, t, mean_sde, cov_sde):
    """``|grad e|_{L2(p^S)} = (tr(E P_S E) + |b - A mu_S|^2)^{1/2}``, ``E = A - P_S^{-1}``.

    Differences of nearly equal numbers: their round-off is amplified by the exponential
    weight of the Lipschitz bound; :func:`gap_and_bound` uses :func:`_riccati_mismatch_norm`.
    """
    A, b = model.A(t), model.b(t)
    E = A - jnp.linalg.inv(cov_sde)
    r = b - A @ mean_sde
    return jnp.sqrt(jnp.clip(jnp.trace(E @ cov_sde @ E) + r @ r, 0.0))


def _riccati_mismatch_norm(E, beta, mean_sde, cov_sde):
    """``|grad e|_{L2(p^S)}`` with ``grad e = -E x + beta`` carried by its Riccati equations:
    ``(tr(E P_S E) + |beta - E mu_S|^2)^{1/2}``, no cancellation (``beta - E mu_S = b - A mu_S``).
    """
    r = beta - E @ mean_sde
    return jnp.sqrt(jnp.clip(jnp.trace(E @ cov_sde @ E) + r @ r, 0.0))


@eqx.filter_jit
def _gap_and_bound(model, prior_mean, prior_cov, T, rtol, atol):
    # T, rtol and atol are Python floats: static under filter_jit.
    I = jnp.eye(model.dim)

    def field(t, y):
        mS, PS, mO, PO, E, beta, gam1, _, gamL, _ = y
        A, b = model.A(t), model.b(t)
        dmS = (A - I) @ mS - b
        dPS = (A - I) @ PS + PS @ (A - I) - I
        dmO = (0.5 * A - I) @ mO - 0.5 * b
        dPO = (0.5 * A - I) @ PO + PO @ (0.5 * A - I)
        # The mismatch grad e = -E x + beta solves the residual-driven Riccati equations
        # (digest Sec. 8.1 (c), 8.2): E' = 2E - E^2 + Q, beta' = beta - E beta + l. Carried
        # directly, it is accurate where it is small; A - P_S^{-1} would leave round-off of the
        # order of rtol |A|, which the Lipschitz weight e^{int (1 + |A|/2)} ~ e^18 amplifies.
        Q, ell, _ = residual_coefficients(model, t)
        dE = 2.0 * E - E @ E + Q
        dbeta = beta - E @ beta + ell
        lam = jnp.linalg.eigvalsh(A)
        mu_one_sided = 1.0 - 0.5 * lam[0]
        mu_lipschitz = 1.0 + 0.5 * jnp.max(jnp.abs(lam))
        m = _riccati_mismatch_norm(E, beta, mS, PS)
        # Backward time: Gamma(tau) = int_{T - tau}^T mu; J(tau) = int g^2/2 e^{-Gamma} |grad e|.
        d_tau = (-dmS, -dPS, -dmO, -dPO, -dE, -dbeta, mu_one_sided, 0.5 * jnp.exp(-gam1) * m,
                 mu_lipschitz, 0.5 * jnp.exp(-gamL) * m)
        return d_tau

    zero = jnp.zeros(())
    Tj = jnp.asarray(T, dtype=prior_cov.dtype)
    prec = jnp.linalg.inv(prior_cov)
    y0 = (prior_mean, prior_cov, prior_mean, prior_cov, model.A(Tj) - prec,
          model.b(Tj) - prec @ prior_mean, zero, zero, zero, zero)
    mS, PS, mO, PO, _, _, gam1, J1, gamL, JL = _solve(field, y0, T, np.zeros(1), rtol, atol)
    w2sq = bures_w2_squared(mS[0], PS[0], mO[0], PO[0])
    return w2sq, jnp.exp(gam1[0]) * J1[0], jnp.exp(gamL[0]) * JL[0]


def gap_and_bound(
    model: LinearGaussianModel,
    prior: Gaussian,
    *,
    T: float = T_PAPER,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> GapResult:
    """The exact gap ``W2^2(p^O(0), p^S(0))`` and the reconstructed Grönwall bound on ``W2``.

    Deveney et al. digest, Sec. 8.1 (b) (reconstructed, not the paper's theorem):
    ``W2(p^O(0), p^S(0)) <= int_0^T g^2/2 e^{int_0^t mu} |grad log p^S - s|_{L2(p^S(t))} dt``
    with the one-sided Lipschitz constant ``mu = 1 - lambda_min(A) / 2`` of the reverse ODE
    velocity ``y + s/2``, or its Lipschitz constant ``1 + |A|_2 / 2`` (the classical, looser
    form). Moments, the mismatch (its residual-driven Riccati equations, from
    ``E(T) = A(T) - P_T^{-1}``, ``beta(T) = b(T) - P_T^{-1} mu_T``), exponents and the integral
    are solved as one ODE with diffrax. The mismatch is carried by its own equations rather
    than formed as ``A - P_S^{-1}``: that difference keeps round-off of order ``rtol |A|``,
    which the Lipschitz form multiplies by ``e^{int (1 + |A|/2)}`` (about ``e^18`` on
    ``[0, 10]``), so that the Lipschitz bound of the exact score would be 0.2 instead of 0.

    Args:
        model: the linear score.
        prior: the common law at ``T`` (:func:`true_prior` or :func:`standard_prior`).
        T: horizon.
        rtol, atol: tolerances of the adaptive solver.

    Returns:
        :class:`GapResult` (``w2_squared``, ``bound_one_sided``, ``bound_lipschitz``).
    """
    w2sq, b1, bL = _gap_and_bound(model, prior.mean, prior.cov, float(T), rtol, atol)
    return GapResult(float(w2sq), float(b1), float(bL))


def mismatch_riccati(
    model: LinearGaussianModel,
    prior: Gaussian,
    t_out: ArrayLike = (0.0,),
    *,
    T: float = T_PAPER,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> tuple[Float[Array, "n d d"], Float[Array, "n d"]]:
    """The mismatch ``grad e = -E x + beta`` driven by the residual (digest Sec. 8.1 (c), 8.2).

    ``E' = 2E - E^2 + Q``, ``beta' = beta - E beta + l`` (``'`` is ``d/dt``), from
    ``E(T) = A(T) - P_T^{-1}`` and ``beta(T) = b(T) - P_T^{-1} mu_T`` for the prior
    ``N(mu_T, P_T)`` (``A(T) - 2I`` and ``b(T)`` for ``N(0, I/2)``). It must equal
    ``(A - P_S^{-1}, b - P_S^{-1} mu_S)`` from :func:`reverse_moments` (check G6).

    Returns:
        ``E`` ``(n, d, d)`` and ``beta`` ``(n, d)`` at ``t_out``.
    """
    t_out = _check_times(t_out, T)
    Tj = jnp.asarray(T, dtype=float)
    prec = jnp.linalg.inv(prior.cov)

    def field(t, y):
        E, beta = y
        Q, ell, _ = residual_coefficients(model, t)
        return (-(2.0 * E - E @ E + Q), -(beta - E @ beta + ell))

    y0 = (model.A(Tj) - prec, model.b(Tj) - prec @ prior.mean)
    E, beta = _solve(field, y0, T, t_out, rtol, atol)
    return E, beta


# --- discrete samplers, exactly --------------------------------------------------------------


def paper_grid(T: float = T_PAPER, h: float = 0.0125, coarse: int = 790, fine: int = 100):
    """The samplers' grid of Deveney et al. (digest Sec. 6): 790 steps of ``h`` from ``T``,
    then 100 of ``h/10``; the network sees the time *before* each update.

    Returns:
        ``(t_eval, steps)``: the 890 times passed to the score and the 890 step sizes.
    """
    t1 = T - h * np.arange(coarse)
    t_mid = T - h * coarse
    t2 = t_mid - (h / 10) * np.arange(fine)
    return np.concatenate([t1, t2]), np.concatenate([np.full(coarse, h), np.full(fine, h / 10)])


def uniform_grid(n_points: int, eps: float, T: float = T_PAPER):
    """The grid of :func:`odesde.samplers.sample` (``n_points`` points from ``T`` to ``eps``)
    as ``(t_eval, steps)`` for :func:`discrete_moments`."""
    samplers.check_grid(n_points, eps, T)
    t = np.asarray(samplers.time_grid(n_points, eps, T))
    return t[:-1], -np.diff(t)


@eqx.filter_jit
def _discrete(model, mean, cov, t_eval, steps, scheme, last_noise):
    I = jnp.eye(model.dim)
    n = t_eval.shape[0]

    def body(carry, inputs):
        mu, P = carry
        t, h, i = inputs
        A, b = model.A(t), model.b(t)
        if scheme == "em":
            M = I + h * (I - A)
            noise = jnp.where((i < n - 1) | last_noise, h, 0.0)
            return (M @ mu + h * b, M @ P @ M.T + noise * I), None
        N = I + h * (I - 0.5 * A)
        return (N @ mu + 0.5 * h * b, N @ P @ N.T), None

    (mu, P), _ = jax.lax.scan(body, (mean, cov), (t_eval, steps, jnp.arange(n)))
    return mu, P


def discrete_moments(
    model: LinearGaussianModel,
    prior: Gaussian,
    t_eval: ArrayLike,
    steps: ArrayLike,
    scheme: Literal["em", "euler"],
    *,
    last_noise: bool = False,
) -> Gaussian:
    """Exact law of the Euler–Maruyama or Euler sampler with the linear score (digest Sec. 8.2).

    EM: ``mu <- M mu + h b``, ``P <- M P M^T + h I`` with ``M = I + h (I - A)``; Euler:
    ``mu <- N mu + h b / 2``, ``P <- N P N^T`` with ``N = I + h (I - A/2)``; ``A, b`` at the
    time passed to the network.

    Args:
        model: the linear score.
        prior: the law of the initial samples.
        t_eval: times passed to the score, one per step.
        steps: step sizes.
        scheme: ``"em"`` or ``"euler"``.
        last_noise: add the noise on the last EM step (``odesde.samplers`` does; the paper's
            sampler does not).

    Returns:
        The law of the output.
    """
    if scheme not in ("em", "euler"):
        raise ValueError(f"scheme={scheme!r}: allowed are 'em', 'euler'")
    t_eval = jnp.asarray(t_eval, dtype=float)
    steps = jnp.asarray(steps, dtype=float)
    if t_eval.ndim != 1 or steps.shape != t_eval.shape or t_eval.size == 0:
        raise ValueError(f"t_eval and steps must be 1-D of one length, got {t_eval.shape}, {steps.shape}")
    mu, P = _discrete(model, prior.mean, prior.cov, t_eval, steps, scheme, bool(last_noise))
    return Gaussian(mu, P)


# --- diagonal closed forms --------------------------------------------------------------------


def diagonal_closed_form(
    a: Callable[[float], float],
    b: Callable[[float], float],
    *,
    T: float = T_PAPER,
    prior_variance: float = 0.5,
    nodes: int = 4000,
) -> dict[str, float]:
    """Per-coordinate closed forms for a diagonal model (digest Sec. 8.2, zero prior mean).

    ``Gamma_O(t) = int_0^t (a/2 - 1)``, ``Gamma_S(t) = int_0^t (a - 1)``;
    ``p_O(0) = p_T e^{-2 Gamma_O(T)}``, ``mu_O(0) = int_0^T e^{-Gamma_O} b / 2``,
    ``p_S(0) = p_T e^{-2 Gamma_S(T)} + int_0^T e^{-2 Gamma_S}``,
    ``mu_S(0) = int_0^T e^{-Gamma_S} b``. Quadrature: composite Gauss–Legendre (``Gamma`` on
    the same nodes by a cumulative Gauss–Legendre sum per piece).

    Args:
        a: the coordinate's precision ``a(t)`` (vectorised over a NumPy array of times).
        b: the coordinate's ``b(t)`` (vectorised).
        T: horizon.
        prior_variance: ``p_T``.
        nodes: number of pieces (4 Gauss nodes each) on ``[0, T]``; pieces are graded
            towards ``t = 0``.

    Returns:
        ``{"p_ode", "mu_ode", "p_sde", "mu_sde"}`` at ``t = 0``.
    """
    breaks = np.concatenate([[0.0], np.geomspace(1e-6, T, nodes)])
    x, w = np.polynomial.legendre.leggauss(8)
    lo, hi = breaks[:-1], breaks[1:]
    half = 0.5 * (hi - lo)[:, None]
    ts = half * x[None] + 0.5 * (hi + lo)[:, None]
    ws = half * w[None]

    def cumulative(f):
        # int_0^t f at every node t: whole pieces before it, then a Gauss rule on [lo, t].
        pieces = np.sum(f(ts) * ws, axis=1)
        before = np.concatenate([[0.0], np.cumsum(pieces)[:-1]])
        partial_half = 0.5 * (ts - lo[:, None])
        inner = partial_half[..., None] * x + 0.5 * (ts + lo[:, None])[..., None]
        return before[:, None] + np.sum(f(inner) * partial_half[..., None] * w, axis=-1), pieces.sum()

    gam_o, gam_o_T = cumulative(lambda t: 0.5 * a(t) - 1.0)
    gam_s, gam_s_T = cumulative(lambda t: a(t) - 1.0)
    bt = b(ts)
    return {
        "p_ode": prior_variance * math.exp(-2 * gam_o_T),
        "mu_ode": float(np.sum(np.exp(-gam_o) * 0.5 * bt * ws)),
        "p_sde": prior_variance * math.exp(-2 * gam_s_T) + float(np.sum(np.exp(-2 * gam_s) * ws)),
        "mu_sde": float(np.sum(np.exp(-gam_s) * bt * ws)),
    }
