"""Forward SDEs with linear drift, ``dx = f(t) x dt + g(t) dw``.

Every forward process in the book has a drift linear in ``x`` and a diffusion that depends on
time only, so that, given ``x_0``, the marginal is Gaussian:

    x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I),    alpha_t = exp(int_0^t f),

with ``d(sigma_t^2)/dt = 2 f(t) sigma_t^2 + g(t)^2``. One interface serves the three papers'
conventions:

- :class:`VPSDE` in Song et al.'s convention (``f = -beta/2``, ``g^2 = beta``, beta from 0.1
  to 20; Lai et al.) or in Pierret & Galerne's (``f = -beta``, ``g^2 = 2 beta``, beta from
  0.05 to 10): the same process, with the rate halved and the noise doubled.
- :class:`VESDE` (``f = 0``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``).
- :class:`OUSDE` (``f = -1``, ``g = 1``, T = 10; Deveney et al.).
"""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

Scalar = Float[ArrayLike, ""]


class SDE(eqx.Module):
    """A forward SDE ``dx = f(t) x dt + g(t) dw`` on ``[0, T]``."""

    T: eqx.AbstractVar[float]

    @abc.abstractmethod
    def drift_coef(self, t: Scalar) -> Float[Array, ""]:
        """The drift coefficient ``f(t)``: the drift is ``f(t) x``."""

    @abc.abstractmethod
    def diffusion(self, t: Scalar) -> Float[Array, ""]:
        """The diffusion coefficient ``g(t)``."""

    @abc.abstractmethod
    def log_mean_scale(self, t: Scalar) -> Float[Array, ""]:
        """``log alpha_t = int_0^t f(s) ds``."""

    @abc.abstractmethod
    def noise_variance(self, t: Scalar) -> Float[Array, ""]:
        """``sigma_t^2``, the variance of ``x_t`` given ``x_0`` (per coordinate)."""

    @property
    @abc.abstractmethod
    def prior_variance(self) -> float:
        """Variance of the Gaussian prior the reverse processes start from at ``T``."""

    def drift(self, x: Float[Array, "*batch d"], t: Scalar) -> Float[Array, "*batch d"]:
        """The forward drift ``f(t) x``."""
        return self.drift_coef(t) * x

    def mean_scale(self, t: Scalar) -> Float[Array, ""]:
        """``alpha_t``, the factor of ``x_0`` in ``x_t = alpha_t x_0 + sigma_t z``."""
        return jnp.exp(self.log_mean_scale(t))

    def noise_std(self, t: Scalar) -> Float[Array, ""]:
        """``sigma_t``, the standard deviation of ``x_t`` given ``x_0``."""
        return jnp.sqrt(self.noise_variance(t))

    def marginal_variance(self, data_variance: ArrayLike, t: Scalar) -> Float[Array, "..."]:
        """Variance of ``x_t`` when ``x_0`` has variance ``data_variance`` along a direction.

        ``alpha_t^2 lambda + sigma_t^2``: the eigenvalues of ``Sigma_t`` for Gaussian data
        (Pierret & Galerne, Sec. 2, ``lambda_i(t)``).
        """
        return self.mean_scale(t) ** 2 * jnp.asarray(data_variance) + self.noise_variance(t)

    def reverse_sde_drift(self, x, t, score):
        """Drift of the reverse-time SDE in forward time: ``f x - g^2 s``."""
        return self.drift(x, t) - self.diffusion(t) ** 2 * score

    def probability_flow_drift(self, x, t, score):
        """Velocity of the probability-flow ODE in forward time: ``f x - g^2 s / 2``."""
        return self.drift(x, t) - 0.5 * self.diffusion(t) ** 2 * score


class VPSDE(SDE):
    """Variance-preserving SDE with a linear schedule ``beta(t)``.

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(T)``.
        T: horizon.
        convention: ``"song"`` for ``dx = -beta x / 2 dt + sqrt(beta) dw`` (Song et al. 2021;
            defaults 0.1 and 20) or ``"pierret"`` for ``dx = -beta x dt + sqrt(2 beta) dw``
            (Pierret & Galerne, Sec. 2; use 0.05 and 10 for the same process).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    convention: Literal["song", "pierret"] = eqx.field(default="song", static=True)

    def __check_init__(self):
        if self.convention not in ("song", "pierret"):
            raise ValueError(
                f"VPSDE convention={self.convention!r}: allowed are 'song' and 'pierret'"
            )
        if not 0 <= self.beta_min <= self.beta_max:
            raise ValueError(
                f"VPSDE needs 0 <= beta_min <= beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        if not self.T > 0:
            raise ValueError(f"VPSDE needs T > 0, got T={self.T}")

    @classmethod
    def pierret_galerne(cls) -> "VPSDE":
        """The schedule of Pierret & Galerne: beta from 0.05 to 10, ``T = 1``, B(1) = 5.025."""
        return cls(beta_min=0.05, beta_max=10.0, T=1.0, convention="pierret")

    @property
    def _rate(self) -> float:
        # f = -rate * beta and g^2 = 2 rate * beta: rate 1/2 for Song, 1 for Pierret.
        return 0.5 if self.convention == "song" else 1.0

    def beta(self, t: Scalar) -> Float[Array, ""]:
        """The schedule ``beta(t) = beta_min + (beta_max - beta_min) t / T``."""
        return self.beta_min + (self.beta_max - self.beta_min) * jnp.asarray(t) / self.T

    def integrated_beta(self, t: Scalar) -> Float[Array, ""]:
        """``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / (2T)``."""
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def drift_coef(self, t):
        return -self._rate * self.beta(t)

    def diffusion(self, t):
        return jnp.sqrt(2 * self._rate * self.beta(t))

    def log_mean_scale(self, t):
        return -self._rate * self.integrated_beta(t)

    def noise_variance(self, t):
        return -jnp.expm1(-2 * self._rate * self.integrated_beta(t))

    @property
    def prior_variance(self) -> float:
        return 1.0


class VESDE(SDE):
    """Variance-exploding SDE, ``sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T)``.

    ``f = 0`` and ``g^2 = d sigma^2 / dt``. As in Song et al.'s code, the perturbation kernel
    has standard deviation ``sigma(t)`` (not ``sqrt(sigma(t)^2 - sigma_min^2)``).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def __check_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )

    def sigma(self, t: Scalar) -> Float[Array, ""]:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (jnp.asarray(t) / self.T)

    def drift_coef(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def diffusion(self, t):
        log_ratio = jnp.log(self.sigma_max / self.sigma_min)
        return self.sigma(t) * jnp.sqrt(2 * log_ratio / self.T)

    def log_mean_scale(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def noise_variance(self, t):
        return self.sigma(t) ** 2

    @property
    def prior_variance(self) -> float:
        return self.sigma_max**2


class OUSDE(SDE):
    """Ornstein–Uhlenbeck process ``dx = -x dt + dw`` (Deveney et al., Sec. 2).

    ``x_t | x_0 ~ N(e^{-t} x_0, (1 - e^{-2t}) / 2)``; the prior is ``N(0, I/2)``.
    """

    T: float = 10.0

    def drift_coef(self, t):
        return -jnp.ones_like(jnp.asarray(t, dtype=float))

    def diffusion(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=float))

    def log_mean_scale(self, t):
        return -jnp.asarray(t, dtype=float)

    def noise_variance(self, t):
        return -0.5 * jnp.expm1(-2 * jnp.asarray(t, dtype=float))

    @property
    def prior_variance(self) -> float:
        return 0.5
