"""Data distributions with exact noised marginals and exact scores.

Every target is an :class:`equinox.Module` with the same small interface:

- ``dim``: the dimension ``d`` of a sample;
- ``distribution()``: the numpyro distribution (event shape ``(d,)``);
- ``sample(n, *, key)``: ``(n, d)`` samples;
- ``log_prob(x)``: the data log-density, batched over leading axes of ``x``.

Targets whose noised marginals are known in closed form add, for a forward SDE
``x_t = alpha_t x_0 + sigma_t z`` (:mod:`odesde.sde`):

- ``marginal_log_prob(x, t, *, sde)``: ``log p_t(x)``, batched over leading axes of ``x``;
- ``marginal_score(x, t, *, sde)``: ``grad_x log p_t(x)`` for ONE point ``x`` of shape ``(d,)``
  (the project's score convention; ``vmap`` over a batch);
- ``score_fn(sde)``: that score as a function ``(x, t) -> (d,)``, ready for the samplers.

Targets:

- :class:`GaussianMixture`: full-covariance Gaussian mixture in any dimension. Noising keeps it a
  mixture: component ``k`` becomes ``N(alpha_t m_k, alpha_t^2 C_k + sigma_t^2 I)``.
- :class:`UniformBoxes`: uniform density on a union of disjoint axis-aligned boxes. Its noised
  density is a sum of products of normal-CDF differences. :class:`TwoIntervals` (1-D, the
  disconnected-support reference of the controllability chapter; Elamvazhuthi et al. digest,
  Sec. 3) and :func:`checker` (Deveney et al., Sec. 5) are instances.
- :class:`Rings`: the circles data of Deveney et al.; exact data density, no closed-form noised
  marginal.

Constructors: :func:`gaussian`, :func:`random_mixture`, and the 2-D toy sets of Deveney et al.
(Sec. 5 of the digest) :func:`blob`, :func:`circles2`, :func:`checker`.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import log_ndtr, logsumexp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .sde import SDE

Scalar = Float[ArrayLike, ""]

__all__ = [
    "Target",
    "GaussianMixture",
    "UniformBoxes",
    "TwoIntervals",
    "Rings",
    "gaussian",
    "random_mixture",
    "blob",
    "circles2",
    "checker",
]


def _float_array(x) -> Array:
    return jnp.asarray(x, dtype=float)


def _concrete(*arrays) -> bool:
    """True when every array has a value (not a tracer): only then can we validate eagerly."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _check_weights(name: str, weights: Array) -> None:
    w = np.asarray(weights)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"{name}: weights must be finite and non-negative, got {w}")
    if abs(w.sum() - 1.0) > 1e-8:
        raise ValueError(f"{name}: weights must sum to 1, got sum {w.sum()!r}")


def _check_sample_size(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"sample: n must be a positive int, got {n!r}")


class Target(eqx.Module):
    """A data distribution on ``R^d`` (see the module docstring for the interface)."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The dimension ``d`` of a sample."""

    @abc.abstractmethod
    def distribution(self) -> dist.Distribution:
        """The target as a numpyro distribution with event shape ``(d,)``."""

    @abc.abstractmethod
    def log_prob(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch"]:
        """The data log-density at ``x``."""

    def sample(self, n: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
        """``n`` independent samples.

        Args:
            n: number of samples (a positive int).
            key: a JAX PRNG key.

        Returns:
            An ``(n, d)`` array.
        """
        _check_sample_size(n)
        return _sample(self, int(n), key)


@eqx.filter_jit
def _sample(target: Target, n: int, key: PRNGKeyArray) -> Array:
    # Compiled: numpyro's samplers run op by op otherwise, which costs seconds per call.
    return target.distribution().sample(key, (n,))


# --------------------------------------------------------------------------------------------
# Gaussian mixtures


class GaussianMixture(Target):
    """A mixture of full-covariance Gaussians, ``sum_k w_k N(m_k, C_k)``, in any dimension.

    Under a forward SDE with linear drift the mixture stays a mixture (e.g. Lai et al. digest,
    Sec. 1 exactness check; Deveney et al. digest, Sec. 8.2), so the noised density and score
    are exact: see :meth:`marginal`.

    Args:
        weights: ``(K,)`` non-negative mixture weights summing to 1.
        means: ``(K, d)`` component means.
        covs: ``(K, d, d)`` symmetric positive-definite component covariances.
    """

    weights: Float[Array, " K"] = eqx.field(converter=_float_array)
    means: Float[Array, "K d"] = eqx.field(converter=_float_array)
    covs: Float[Array, "K d d"] = eqx.field(converter=_float_array)

    def __check_init__(self):
        w, m, c = self.weights, self.means, self.covs
        if w.ndim != 1 or m.ndim != 2 or c.ndim != 3:
            raise ValueError(
                "GaussianMixture needs weights (K,), means (K, d) and covs (K, d, d), got "
                f"shapes {w.shape}, {m.shape} and {c.shape}"
            )
        k, d = m.shape
        if w.shape != (k,) or c.shape != (k, d, d):
            raise ValueError(
                f"GaussianMixture: means have shape {m.shape} (K={k}, d={d}), so weights must be "
                f"({k},) and covs ({k}, {d}, {d}); got {w.shape} and {c.shape}"
            )
        if _concrete(w, c):
            _check_weights("GaussianMixture", w)
            cn = np.asarray(c)
            asym = np.max(np.abs(cn - np.swapaxes(cn, -1, -2)))
            if asym > 1e-10 * max(1.0, np.max(np.abs(cn))):
                raise ValueError(f"GaussianMixture: covs must be symmetric, max |C - C^T| = {asym}")
            eig = np.linalg.eigvalsh(cn)
            if np.min(eig) <= 0:
                raise ValueError(
                    "GaussianMixture: covs must be positive definite, smallest eigenvalue "
                    f"{np.min(eig)!r} (component {int(np.argmin(np.min(eig, axis=-1)))})"
                )

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def distribution(self) -> dist.MixtureSameFamily:
        return dist.MixtureSameFamily(
            dist.Categorical(probs=self.weights),
            dist.MultivariateNormal(self.means, covariance_matrix=self.covs),
        )

    def log_prob(self, x):
        return self.distribution().log_prob(x)

    def mean(self) -> Float[Array, " d"]:
        """The mixture mean ``sum_k w_k m_k``."""
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "d d"]:
        """The mixture covariance ``sum_k w_k (C_k + m_k m_k^T) - m m^T``."""
        m = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        return second - jnp.outer(m, m)

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The data score ``grad log p(x)`` at one point, in closed form.

        ``-sum_k r_k(x) C_k^{-1} (x - m_k)`` with the posterior responsibilities ``r_k(x)``.
        """
        chol = jnp.linalg.cholesky(self.covs)
        diff = x - self.means
        # C_k^{-1} (x - m_k) by two triangular solves per component.
        precision_diff = jax.vmap(lambda l, r: jax.scipy.linalg.cho_solve((l, True), r))(
            chol, diff
        )
        log_det_half = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_joint = jnp.log(self.weights) - 0.5 * jnp.sum(diff * precision_diff, -1) - log_det_half
        resp = jax.nn.softmax(log_joint)
        return -resp @ precision_diff

    def marginal(self, sde: SDE, t: Scalar) -> "GaussianMixture":
        """The law of ``x_t`` under ``sde`` when ``x_0`` follows this mixture.

        Component ``k`` becomes ``N(alpha_t m_k, alpha_t^2 C_k + sigma_t^2 I)``.
        """
        alpha = sde.mean_scale(t)
        var = sde.noise_variance(t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return GaussianMixture(self.weights, alpha * self.means, alpha**2 * self.covs + var * eye)

    def marginal_log_prob(self, x: Float[Array, "*batch d"], t: Scalar, *, sde: SDE):
        """``log p_t(x)`` under ``sde``, batched over leading axes of ``x``."""
        return self.marginal(sde, t).log_prob(x)

    def marginal_score(self, x: Float[Array, " d"], t: Scalar, *, sde: SDE):
        """The exact score ``grad_x log p_t(x)`` at one point under ``sde``."""
        return self.marginal(sde, t).score(x)

    def score_fn(self, sde: SDE):
        """The exact noised score as a function ``(x: (d,), t) -> (d,)`` (a pytree)."""
        return eqx.Partial(_mixture_score, self, sde)


def _mixture_score(mixture: GaussianMixture, sde: SDE, x, t):
    return mixture.marginal_score(x, t, sde=sde)


def gaussian(mean: ArrayLike, cov: ArrayLike) -> GaussianMixture:
    """A single Gaussian ``N(mean, cov)`` as a one-component :class:`GaussianMixture`."""
    mean = _float_array(mean)
    cov = _float_array(cov)
    if mean.ndim != 1:
        raise ValueError(f"gaussian: mean must be a vector (d,), got shape {mean.shape}")
    return GaussianMixture(jnp.ones(1), mean[None], cov[None])


def random_mixture(
    dim: int,
    num_components: int,
    *,
    key: PRNGKeyArray,
    radius: float = 4.0,
    std: float = 0.5,
    anisotropy: float = 2.0,
    equal_weights: bool = False,
) -> GaussianMixture:
    """A random, well-separated Gaussian mixture in ``dim`` dimensions.

    The means are ``radius`` times distinct vectors of a random orthonormal basis or their
    negatives, so any two means are at least ``sqrt(2) radius`` apart (with the defaults, 11
    largest component standard deviations). Each covariance has a random orientation and standard
    deviations log-uniform in ``[std / anisotropy, std]``.

    Args:
        dim: the dimension ``d >= 1``.
        num_components: ``K``, at most ``2 d`` (so that the separation above holds).
        key: a JAX PRNG key.
        radius: distance of every mean from the origin.
        std: the largest standard deviation of a component along any direction.
        anisotropy: ratio (>= 1) of a component's largest to smallest standard deviation.
        equal_weights: equal weights if true, else weights proportional to ``U[0.5, 1.5]``
            draws (at most a factor 3 apart).

    Returns:
        A :class:`GaussianMixture`.
    """
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"random_mixture: dim must be a positive int, got {dim!r}")
    if not isinstance(num_components, (int, np.integer)) or not 1 <= num_components <= 2 * dim:
        raise ValueError(
            f"random_mixture: num_components must be an int in [1, 2 * dim = {2 * dim}], "
            f"got {num_components!r}"
        )
    if not (radius > 0 and std > 0 and anisotropy >= 1):
        raise ValueError(
            "random_mixture needs radius > 0, std > 0 and anisotropy >= 1, got "
            f"radius={radius}, std={std}, anisotropy={anisotropy}"
        )
    weights, means, covs = _random_mixture_parameters(
        key, dim, num_components, radius, std, anisotropy, equal_weights
    )
    return GaussianMixture(weights, means, covs)


@eqx.filter_jit
def _random_mixture_parameters(key, dim, num_components, radius, std, anisotropy, equal_weights):
    k_basis, k_perm, k_rot, k_std, k_w = jax.random.split(key, 5)
    basis, _ = jnp.linalg.qr(jax.random.normal(k_basis, (dim, dim)))
    directions = jnp.concatenate([basis.T, -basis.T])[
        jax.random.permutation(k_perm, 2 * dim)[:num_components]
    ]
    means = radius * directions
    rotations, _ = jnp.linalg.qr(jax.random.normal(k_rot, (num_components, dim, dim)))
    log_std = jax.random.uniform(
        k_std, (num_components, dim), minval=math.log(std / anisotropy), maxval=math.log(std)
    )
    covs = jnp.einsum("kij,kj,klj->kil", rotations, jnp.exp(2 * log_std), rotations)
    covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
    if equal_weights:
        weights = jnp.full(num_components, 1.0 / num_components)
    else:
        raw = jax.random.uniform(k_w, (num_components,), minval=0.5, maxval=1.5)
        weights = raw / jnp.sum(raw)
    return weights, means, covs


def blob() -> GaussianMixture:
    """Deveney et al.'s ``blob`` (Mixture) data set (digest, Sec. 5).

    Nine equal-weight Gaussians with covariance ``0.0845 I`` (std 0.2907) centred at
    ``0.65 * {(0,0), (+-2,+-2), (+-4,0), (0,+-4)}``: a 3 x 3 lattice rotated by 45 degrees.
    """
    centres = jnp.array(
        [[0, 0], [2, 2], [2, -2], [-2, 2], [-2, -2], [4, 0], [-4, 0], [0, 4], [0, -4]],
        dtype=float,
    )
    covs = jnp.broadcast_to(0.65**2 * 0.2 * jnp.eye(2), (9, 2, 2))
    return GaussianMixture(jnp.full(9, 1.0 / 9.0), 0.65 * centres, covs)


# --------------------------------------------------------------------------------------------
# Uniform densities on unions of boxes


def _log1mexp(a: Array) -> Array:
    """``log(1 - exp(a))`` for ``a < 0``, accurate on both sides of ``-log 2`` (Maechler 2012)."""
    # The clamp keeps the unused branch finite so that gradients stay finite.
    near = jnp.log(-jnp.expm1(jnp.minimum(a, -1e-300)))
    far = jnp.log1p(-jnp.exp(jnp.minimum(a, -math.log(2))))
    return jnp.where(a > -math.log(2), near, far)


def _log_normal_cdf_diff(hi: Array, lo: Array) -> Array:
    """``log(Phi(hi) - Phi(lo))`` for ``hi > lo``, without cancellation in either tail."""
    # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): use the form whose arguments sit in the lower
    # tail, where log_ndtr keeps full relative precision.
    flip = hi + lo > 0
    hi, lo = jnp.where(flip, -lo, hi), jnp.where(flip, -hi, lo)
    log_hi = log_ndtr(hi)
    return log_hi + _log1mexp(log_ndtr(lo) - log_hi)


class UniformBoxes(Target):
    """The uniform density on a union of disjoint axis-aligned boxes in ``R^d``.

    Box ``k`` is ``prod_j [lows[k, j], highs[k, j]]``; the density is constant, ``1 / total
    volume``, on the union, so box ``k`` carries mass proportional to its volume. Disjointness is
    not checked (overlaps would count twice).

    Noised marginal (Elamvazhuthi et al. digest, Sec. 3, for one interval under OU; here any
    linear-drift SDE and any box): if ``x_0 ~ U[a, b]`` then ``x_t = alpha x_0 + sigma z`` has
    density ``(Phi((x - alpha a)/sigma) - Phi((x - alpha b)/sigma)) / (alpha (b - a))``, and
    isotropic noise keeps a box a product of such factors.

    Args:
        lows: ``(K, d)`` lower corners.
        highs: ``(K, d)`` upper corners, ``highs > lows`` entrywise.
    """

    lows: Float[Array, "K d"] = eqx.field(converter=_float_array)
    highs: Float[Array, "K d"] = eqx.field(converter=_float_array)

    def __check_init__(self):
        if self.lows.ndim != 2 or self.lows.shape != self.highs.shape:
            raise ValueError(
                "UniformBoxes needs lows and highs of the same shape (K, d), got "
                f"{self.lows.shape} and {self.highs.shape}"
            )
        if _concrete(self.lows, self.highs) and not np.all(
            np.asarray(self.highs) > np.asarray(self.lows)
        ):
            raise ValueError(
                f"UniformBoxes needs highs > lows in every coordinate, got lows={self.lows}, "
                f"highs={self.highs}"
            )

    @property
    def dim(self) -> int:
        return self.lows.shape[1]

    def _log_volumes(self) -> Float[Array, " K"]:
        return jnp.sum(jnp.log(self.highs - self.lows), axis=-1)

    @property
    def weights(self) -> Float[Array, " K"]:
        """Mass of each box: its volume over the total volume."""
        return jax.nn.softmax(self._log_volumes())

    def distribution(self) -> dist.MixtureGeneral:
        # MixtureSameFamily refuses components whose support depends on their parameters.
        components = [
            dist.Independent(dist.Uniform(lo, hi), 1) for lo, hi in zip(self.lows, self.highs)
        ]
        return dist.MixtureGeneral(
            dist.Categorical(probs=self.weights), components, support=dist.constraints.real_vector
        )

    def log_prob(self, x):
        x = jnp.asarray(x)
        inside = jnp.all((x[..., None, :] >= self.lows) & (x[..., None, :] <= self.highs), -1)
        log_density = -logsumexp(self._log_volumes())
        return jnp.where(jnp.any(inside, -1), log_density, -jnp.inf)

    def mean(self) -> Float[Array, " d"]:
        """The mean ``sum_k w_k (lows_k + highs_k) / 2``."""
        return self.weights @ (0.5 * (self.lows + self.highs))

    def covariance(self) -> Float[Array, "d d"]:
        """The covariance: within-box variances ``(b - a)^2 / 12`` plus the spread of centres."""
        centres = 0.5 * (self.lows + self.highs)
        within = jnp.einsum("k,kj->j", self.weights, (self.highs - self.lows) ** 2 / 12.0)
        m = self.mean()
        between = jnp.einsum("k,ki,kj->ij", self.weights, centres, centres) - jnp.outer(m, m)
        return jnp.diag(within) + between

    def marginal_log_prob(self, x: Float[Array, "*batch d"], t: Scalar, *, sde: SDE):
        """``log p_t(x)`` under ``sde``, batched over leading axes of ``x``.

        Needs ``sigma_t > 0`` (``t > 0`` for VP and OU): at ``sigma_t = 0`` use :meth:`log_prob`.
        """
        alpha = sde.mean_scale(t)
        sigma = sde.noise_std(t)
        x = jnp.asarray(x)[..., None, :]
        per_coord = _log_normal_cdf_diff(
            (x - alpha * self.lows) / sigma, (x - alpha * self.highs) / sigma
        ) - jnp.log(alpha * (self.highs - self.lows))
        log_boxes = jnp.log(self.weights) + jnp.sum(per_coord, -1)
        return logsumexp(log_boxes, axis=-1)

    def marginal_score(self, x: Float[Array, " d"], t: Scalar, *, sde: SDE):
        """The exact score ``grad_x log p_t(x)`` at one point (autodiff of the closed form)."""
        return jax.grad(self.marginal_log_prob)(x, t, sde=sde)

    def score_fn(self, sde: SDE):
        """The exact noised score as a function ``(x: (d,), t) -> (d,)`` (a pytree)."""
        return eqx.Partial(_boxes_score, self, sde)


def _boxes_score(boxes: UniformBoxes, sde: SDE, x, t):
    return boxes.marginal_score(x, t, sde=sde)


class TwoIntervals(UniformBoxes):
    """The uniform density on two disjoint intervals of the real line (a 1-D target).

    The disconnected-support reference of the controllability chapter (Elamvazhuthi et al.
    digest, Secs. 2-3: e.g. ``[-2, -1] U [1, 2]``). Points are vectors of shape ``(1,)``, like
    every target's. All methods are those of :class:`UniformBoxes`.

    Args:
        left: ``(a, b)``, the left interval.
        right: ``(c, d)``, the right interval, with ``a < b < c < d``.
    """

    def __init__(
        self,
        left: tuple[float, float] = (-2.0, -1.0),
        right: tuple[float, float] = (1.0, 2.0),
    ):
        (a, b), (c, d) = left, right
        if not a < b < c < d:
            raise ValueError(
                f"TwoIntervals needs disjoint ordered intervals a < b < c < d, got left={left}, "
                f"right={right}"
            )
        self.lows = _float_array([[a], [c]])
        self.highs = _float_array([[b], [d]])


def checker() -> UniformBoxes:
    """Deveney et al.'s ``checker`` data set (digest, Sec. 5).

    Uniform (density 1/18) on the 8 squares ``[-3 + 1.5 i, -1.5 + 1.5 i] x [-3 + 1.5 j,
    -1.5 + 1.5 j]`` with ``i, j`` in ``0..3`` and ``i + j`` even; the bottom-left square is
    occupied.
    """
    cells = [(i, j) for j in range(4) for i in range(4) if (i + j) % 2 == 0]
    lows = jnp.array([[-3.0 + 1.5 * i, -3.0 + 1.5 * j] for i, j in cells])
    return UniformBoxes(lows, lows + 1.5)


# --------------------------------------------------------------------------------------------
# Rings


class _RingsDistribution(dist.Distribution):
    """numpyro distribution of ``r (cos theta, sin theta)``, ``r ~ sum_k w_k N(mu_k, s_k^2)``,
    ``theta ~ U[0, 2 pi)`` independent of ``r``."""

    support = dist.constraints.real_vector

    def __init__(self, weights, radii, radial_stds):
        self.weights, self.radii, self.radial_stds = weights, radii, radial_stds
        super().__init__(batch_shape=(), event_shape=(2,))

    def sample(self, key, sample_shape=()):
        k_comp, k_r, k_theta = jax.random.split(key, 3)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=sample_shape)
        r = self.radii[comp] + self.radial_stds[comp] * jax.random.normal(k_r, sample_shape)
        theta = jax.random.uniform(k_theta, sample_shape, maxval=2 * jnp.pi)
        return r[..., None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)

    def log_prob(self, value):
        rho = jnp.linalg.norm(value, axis=-1)[..., None]
        # A negative radius draw lands at radius |r| on the opposite side: both signs count.
        radial = dist.Normal(self.radii, self.radial_stds)
        log_radial = jnp.logaddexp(radial.log_prob(rho), radial.log_prob(-rho))
        return logsumexp(jnp.log(self.weights) + log_radial, axis=-1) - jnp.log(
            2 * jnp.pi * rho[..., 0]
        )


class Rings(Target):
    """Concentric rings in 2-D: ``r (cos theta, sin theta)`` with a Gaussian-mixture radius.

    The radius follows ``sum_k w_k N(radii_k, radial_stds_k^2)`` and the angle is uniform and
    independent of it. The data density is exact; the noised marginal has no closed form
    (the angular integral gives a Bessel function, the radial one does not close), so this
    target offers no ``marginal_*`` methods.

    Args:
        weights: ``(K,)`` ring masses summing to 1.
        radii: ``(K,)`` mean radii.
        radial_stds: ``(K,)`` radial standard deviations.
    """

    weights: Float[Array, " K"] = eqx.field(converter=_float_array)
    radii: Float[Array, " K"] = eqx.field(converter=_float_array)
    radial_stds: Float[Array, " K"] = eqx.field(converter=_float_array)

    def __check_init__(self):
        shapes = {self.weights.shape, self.radii.shape, self.radial_stds.shape}
        if len(shapes) != 1 or self.weights.ndim != 1:
            raise ValueError(
                "Rings needs weights, radii and radial_stds of one shape (K,), got "
                f"{self.weights.shape}, {self.radii.shape}, {self.radial_stds.shape}"
            )
        if _concrete(self.weights, self.radial_stds):
            _check_weights("Rings", self.weights)
            if not np.all(np.asarray(self.radial_stds) > 0):
                raise ValueError(f"Rings: radial_stds must be > 0, got {self.radial_stds}")

    @property
    def dim(self) -> int:
        return 2

    def distribution(self) -> _RingsDistribution:
        return _RingsDistribution(self.weights, self.radii, self.radial_stds)

    def log_prob(self, x):
        return self.distribution().log_prob(x)


def circles2() -> Rings:
    """Deveney et al.'s ``circles2`` data set (digest, Sec. 5).

    Equal mass on two rings with radii ``N(1.3, 0.2^2)`` and ``N(2.8, 0.2^2)`` (the code's
    ``2 r`` with ``r ~ N(0.65, 0.1^2)`` and ``N(1.4, 0.1^2)``). Deviation from the official code:
    the angle is drawn independently for every point, whereas the code pairs inner and outer
    points on a shared angle (the digest's recommendation).
    """
    return Rings(jnp.array([0.5, 0.5]), jnp.array([1.3, 2.8]), jnp.array([0.2, 0.2]))
