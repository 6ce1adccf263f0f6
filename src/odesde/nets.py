"""Score networks as equinox modules.

Both networks are score functions in the project's convention, ``model(x: (d,), t) -> (d,)``:

- :class:`ScoreMLP`: an MLP on ``(x, embedding(t))`` that outputs the score directly, or a
  noise prediction divided by ``sigma_t`` (the prototype of the Lai et al. digest, Sec. 6);
- :class:`PotentialMLP`: a scalar potential ``phi(x, t)`` with score ``grad_x phi``, conservative by
  construction (Deveney et al. digest, Sec. 2); :meth:`PotentialMLP.potential` feeds the
  log-density Fokker–Planck residual.

Time embeddings: :class:`SinusoidalEmbedding` and :class:`GaussianFourierEmbedding`.
All parameters are float64 (the project's default): the exactness tests differentiate these
networks up to third order.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .sde import SDE

Scalar = Float[ArrayLike, ""]

__all__ = [
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "ScoreMLP",
    "PotentialMLP",
    "softplus",
    "count_parameters",
]


class SinusoidalEmbedding(eqx.Module):
    """``[sin(w_i t), cos(w_i t)]`` with frequencies ``w_i`` geometric in ``[min, max]``.

    The transformer/DDPM embedding (Vaswani et al. 2017; Ho et al. 2020) with frequencies
    given in radians per unit of time. No parameters.

    Args:
        dim: output size (even).
        min_frequency: lowest frequency.
        max_frequency: highest frequency.
    """

    frequencies: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, dim: int = 32, min_frequency: float = 1.0, max_frequency: float = 100.0):
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"SinusoidalEmbedding: dim must be an even int >= 2, got {dim!r}")
        if not 0 < min_frequency <= max_frequency:
            raise ValueError(
                "SinusoidalEmbedding needs 0 < min_frequency <= max_frequency, got "
                f"{min_frequency}, {max_frequency}"
            )
        # A tuple keeps the static field hashable.
        self.frequencies = tuple(np.geomspace(min_frequency, max_frequency, dim // 2).tolist())

    def __call__(self, t: Scalar) -> Float[Array, " dim"]:
        arg = jnp.asarray(self.frequencies) * t
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


class GaussianFourierEmbedding(eqx.Module):
    """Random Fourier features ``[sin(2 pi W t), cos(2 pi W t)]``, ``W ~ N(0, scale^2)``, fixed.

    Song et al. (2021)'s time embedding. ``W`` is a leaf of the module but never trained: its
    gradient is stopped.

    Args:
        dim: output size (even).
        scale: standard deviation of the random frequencies.
        key: PRNG key for ``W``.
    """

    weights: Float[Array, " half"]

    def __init__(self, dim: int = 32, scale: float = 16.0, *, key: PRNGKeyArray):
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"GaussianFourierEmbedding: dim must be an even int >= 2, got {dim!r}")
        if not scale > 0:
            raise ValueError(f"GaussianFourierEmbedding: scale must be > 0, got {scale}")
        self.weights = scale * jax.random.normal(key, (dim // 2,))

    def __call__(self, t: Scalar) -> Float[Array, " dim"]:
        arg = 2 * jnp.pi * jax.lax.stop_gradient(self.weights) * t
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
}


class ScoreMLP(eqx.Module):
    """A time-conditioned MLP score network ``s(x, t)``.

    Input ``[x, embedding(t / t_max)]``; ``depth`` hidden layers of size ``width``. The
    ``"direct"`` parametrisation outputs the score; ``"noise"`` outputs ``-eps_hat(x, t) /
    sigma_t`` (noise prediction; the prototype of the Lai et al. digest, Sec. 6), which needs the
    forward ``sde`` and ``t > 0``.

    Args:
        dim: data dimension ``d``.
        key: PRNG key for the initial parameters.
        width: hidden layer size.
        depth: number of hidden layers.
        activation: ``"silu"``, ``"gelu"``, ``"tanh"``, ``"softplus"``, ``"relu"`` or a function.
        embedding: ``"sinusoidal"`` (:class:`SinusoidalEmbedding`) or ``"fourier"``
            (:class:`GaussianFourierEmbedding`), or an embedding module.
        embed_dim: embedding size (for the named embeddings).
        t_max: time scale: the embedding sees ``t / t_max`` (use the SDE's ``T``).
        parametrisation: ``"direct"`` or ``"noise"``.
        sde: the forward SDE; required for ``"noise"``.
    """

    mlp: eqx.nn.MLP
    embedding: eqx.Module
    t_max: float = eqx.field(static=True)
    parametrisation: str = eqx.field(static=True)
    sde: SDE | None

    def __init__(
        self,
        dim: int,
        *,
        key: PRNGKeyArray,
        width: int = 128,
        depth: int = 3,
        activation: str | Callable[[Array], Array] = "silu",
        embedding: Literal["sinusoidal", "fourier"] | eqx.Module = "sinusoidal",
        embed_dim: int = 32,
        t_max: float = 1.0,
        parametrisation: Literal["direct", "noise"] = "direct",
        sde: SDE | None = None,
    ):
        for name, value in (("dim", dim), ("width", width), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ScoreMLP: {name} must be a positive int, got {value!r}")
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"ScoreMLP activation={activation!r}: allowed are {sorted(_ACTIVATIONS)} or "
                    "a function"
                )
            activation = _ACTIVATIONS[activation]
        if parametrisation not in ("direct", "noise"):
            raise ValueError(
                f"ScoreMLP parametrisation={parametrisation!r}: allowed are 'direct', 'noise'"
            )
        if parametrisation == "noise" and sde is None:
            raise ValueError("ScoreMLP(parametrisation='noise') needs sde= (to divide by sigma_t)")
        if not t_max > 0:
            raise ValueError(f"ScoreMLP: t_max must be > 0, got {t_max}")
        k_emb, k_mlp = jax.random.split(key)
        if embedding == "sinusoidal":
            embedding = SinusoidalEmbedding(embed_dim)
        elif embedding == "fourier":
            embedding = GaussianFourierEmbedding(embed_dim, key=k_emb)
        elif not isinstance(embedding, eqx.Module):
            raise ValueError(
                f"ScoreMLP embedding={embedding!r}: allowed are 'sinusoidal', 'fourier' or a "
                "module mapping t to a vector"
            )
        in_size = dim + embedding(jnp.zeros(())).shape[0]
        self.mlp = eqx.nn.MLP(in_size, dim, width, depth, activation=activation, key=k_mlp)
        self.embedding = embedding
        self.t_max = float(t_max)
        self.parametrisation = parametrisation
        self.sde = sde

    def __call__(self, x: Float[Array, " d"], t: Scalar) -> Float[Array, " d"]:
        t = jnp.asarray(t, dtype=float)
        out = self.mlp(jnp.concatenate([x, self.embedding(t / self.t_max)]))
        if self.parametrisation == "noise":
            return -out / self.sde.noise_std(t)
        return out


def softplus(z: Array, beta: float = 1.0, threshold: float = 20.0) -> Array:
    """``log(1 + exp(beta z)) / beta``, exactly linear where ``beta z > threshold``.

    The definition of ``torch.nn.Softplus(beta, threshold)`` (Deveney et al. digest, Sec. 2).
    """
    bz = beta * z
    # logaddexp stays finite on the unused branch, keeping gradients finite.
    return jnp.where(bz > threshold, z, jnp.logaddexp(bz, 0.0) / beta)


class PotentialMLP(eqx.Module):
    """A scalar potential network ``phi(x, t)`` whose gradient is the score (Deveney et al.).

    Deveney et al. digest, Sec. 2: input ``(t, x_1, ..., x_d)`` (time first), ``depth`` hidden
    layers of ``width`` with ``Softplus_beta`` (torch's threshold 20), a linear scalar output;
    torch's default initialisation ``U(+-1/sqrt(fan_in))`` (also equinox's). With ``d = 2`` and the
    defaults: 3 -> 80 -> 80 -> 80 -> 1, 13,361 parameters. The paper's ``beta = 100`` fails in
    short CPU runs; the digest recommends ``beta = 10`` there (deviation D1).

    Calling the module returns the score ``grad_x phi``; :meth:`potential` returns ``phi``.

    Args:
        dim: data dimension ``d``.
        key: PRNG key for the initial parameters.
        width: hidden layer size.
        depth: number of hidden layers.
        beta: the Softplus sharpness.
        threshold: the Softplus linear threshold on ``beta z``.
    """

    layers: tuple[eqx.nn.Linear, ...]
    beta: float = eqx.field(static=True)
    threshold: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int = 2,
        *,
        key: PRNGKeyArray,
        width: int = 80,
        depth: int = 3,
        beta: float = 100.0,
        threshold: float = 20.0,
    ):
        for name, value in (("dim", dim), ("width", width), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PotentialMLP: {name} must be a positive int, got {value!r}")
        if not beta > 0:
            raise ValueError(f"PotentialMLP: beta must be > 0, got {beta}")
        sizes = [dim + 1] + [width] * depth + [1]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(i, o, key=k) for i, o, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.beta = float(beta)
        self.threshold = float(threshold)

    def potential(self, x: Float[Array, " d"], t: Scalar) -> Float[Array, ""]:
        """``phi(x, t)``, the modelled log-density up to a function of time."""
        z = jnp.concatenate([jnp.asarray(t, dtype=float)[None], x])
        for layer in self.layers[:-1]:
            z = softplus(layer(z), self.beta, self.threshold)
        return self.layers[-1](z)[0]

    def __call__(self, x: Float[Array, " d"], t: Scalar) -> Float[Array, " d"]:
        return jax.grad(self.potential)(x, t)


def count_parameters(model) -> int:
    """Number of scalars in the inexact array leaves of a model.

    Counts the frozen frequencies of a :class:`GaussianFourierEmbedding` too.
    """
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(math.prod(leaf.shape) for leaf in leaves))
