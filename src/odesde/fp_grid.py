"""Fokker–Planck densities on grids, and probability-flow ODE densities by characteristics.

The numerical building blocks of the controllability chapter (Elamvazhuthi et al. digest,
Sec. 3; the companion's own design, not the paper's):

- :class:`Grid`: cells on ``[-L, L]^d`` (``d`` = 1 or 2) with the grid metrics: mass, L2, total
  variation, exact 1-D W2 from quantile functions, 2-D W2 by POT ``emd2`` on grid weights.
- :func:`solve_fp`: finite volumes with Scharfetter–Gummel fluxes and zero-flux walls for
  ``d rho / d tau = -div(v rho) + D(tau) Laplace(rho)``, linearly implicit Euler in time
  (dimension-split in 2-D), written with ``lax.scan`` and ``jax.checkpoint`` so that controls can
  be trained through it. Mass is conserved to round-off and positivity holds for every step size.
- Dynamics: :class:`ForwardSDE` (the forward FP equation, for validation against exact marginals),
  :class:`ReverseSDE` (the reverse-time SDE's FP equation for any score) and its probability-flow
  velocity :class:`ReverseODE`.
- :func:`ode_log_density`: PF-ODE densities by backward characteristics with the log-Jacobian
  (never on a grid: an upwind scheme's numerical diffusion would hide the effect under test), and
  :func:`push_particles`, a differentiable fixed-step RK4 push of particles.

Conventions: a score takes one point and a forward time, ``score(x: (d,), t) -> (d,)``; a drift or
velocity takes one point and the dynamics' own time, ``v(x: (d,), tau) -> (d,)``. 2-D grid arrays
are indexed ``rho[i1, i2]`` at ``(a[i1], a[i2])`` ('ij' indexing).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax import lax
from jax.lax.linalg import tridiagonal_solve
from jaxtyping import Array, ArrayLike, Float

from .sde import SDE

__all__ = [
    "Grid",
    "bernoulli",
    "scharfetter_gummel_flux",
    "ForwardSDE",
    "ReverseSDE",
    "ReverseODE",
    "reverse_times",
    "solve_fp",
    "ode_log_density",
    "push_particles",
    "prior_log_prob",
]

Scalar = Float[ArrayLike, ""]
VectorField = Callable[[Float[Array, " d"], Scalar], Float[Array, " d"]]

#: Largest number of occupied cells per side for the 2-D POT W2 (a 4096 x 4096 cost matrix).
MAX_EMD_CELLS = 4096
_EMD_MAX_ITER = 10_000_000


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


# --------------------------------------------------------------------------------------------
# The grid and its metrics


class Grid(eqx.Module):
    """``num_cells^d`` equal cells on ``[-half_width, half_width]^d``, ``d`` in {1, 2}.

    Densities on the grid are arrays of shape :attr:`shape` read as cell values (piecewise
    constant for the quantile-based W2). Digest Sec. 3: ``L ~ 6``.

    Args:
        num_cells: cells per axis (an int >= 3).
        half_width: ``L``.
        dim: 1 or 2.
    """

    num_cells: int = eqx.field(static=True)
    half_width: float = eqx.field(static=True)
    dim: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if isinstance(self.num_cells, bool) or not isinstance(self.num_cells, (int, np.integer)):
            raise ValueError(f"Grid: num_cells must be an int >= 3, got {self.num_cells!r}")
        if self.num_cells < 3:
            raise ValueError(f"Grid: num_cells must be an int >= 3, got {self.num_cells}")
        if not (isinstance(self.half_width, (int, float)) and self.half_width > 0):
            raise ValueError(f"Grid: half_width must be a number > 0, got {self.half_width!r}")
        if self.dim not in (1, 2):
            raise ValueError(f"Grid: dim must be 1 or 2, got {self.dim!r}")

    @property
    def dx(self) -> float:
        """The cell width."""
        return 2.0 * self.half_width / self.num_cells

    @property
    def cell_volume(self) -> float:
        return self.dx**self.dim

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_cells,) * self.dim

    def centres(self) -> Float[Array, " n"]:
        """Cell centres along one axis, ``-L + (i + 1/2) dx``."""
        return -self.half_width + self.dx * (jnp.arange(self.num_cells, dtype=float) + 0.5)

    def edges(self) -> Float[Array, " n+1"]:
        """Cell faces along one axis, ``-L + i dx`` (walls included)."""
        return jnp.linspace(-self.half_width, self.half_width, self.num_cells + 1)

    def points(self) -> Float[Array, "*shape d"]:
        """Cell centres as points, shape ``(*shape, d)``."""
        a = self.centres()
        return jnp.stack(jnp.meshgrid(*([a] * self.dim), indexing="ij"), axis=-1)

    def face_points(self, axis: int) -> Float[Array, "..."]:
        """Interior faces normal to ``axis`` as points: ``num_cells - 1`` along ``axis``."""
        axes = [self.centres()] * self.dim
        axes[axis] = self.edges()[1:-1]
        return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)

    def density(self, log_prob: Callable, *, normalise: bool = False) -> Float[Array, "*shape"]:
        """``exp(log_prob)`` at the cell centres.

        Args:
            log_prob: a log-density batched over leading axes (e.g. ``lambda x:
                target.marginal_log_prob(x, t, sde=sde)``).
            normalise: rescale to unit mass on the grid.
        """
        # One compiled program: numpyro log-densities run op by op (seconds) otherwise.
        rho = _exp_of(log_prob, self.points())
        if rho.shape != self.shape:
            raise ValueError(
                f"Grid.density: log_prob must map points {self.points().shape} to {self.shape}, "
                f"got {rho.shape}"
            )
        return rho / self.mass(rho) if normalise else rho

    def mass(self, rho: ArrayLike) -> Float[Array, ""]:
        """``sum_i rho_i dx^d``."""
        return jnp.sum(jnp.asarray(rho)) * self.cell_volume

    def l2(self, p: ArrayLike, q: ArrayLike) -> Float[Array, ""]:
        """``(sum_i (p_i - q_i)^2 dx^d)^(1/2)`` (differentiable; the digest's L2)."""
        diff = jnp.asarray(p) - jnp.asarray(q)
        return jnp.sqrt(jnp.sum(diff**2) * self.cell_volume)

    def tv(self, p: ArrayLike, q: ArrayLike) -> Float[Array, ""]:
        """Total variation ``1/2 sum_i |p_i - q_i| dx^d``."""
        return 0.5 * jnp.sum(jnp.abs(jnp.asarray(p) - jnp.asarray(q))) * self.cell_volume

    def quantile(self, rho: ArrayLike, u: ArrayLike) -> Float[Array, "..."]:
        """The inverse CDF of a 1-D grid density (piecewise constant, renormalised) at ``u``.

        The CDF is piecewise linear through the faces, so the quantile is linear inside each cell
        with positive mass. ``u`` in ``(0, 1)``.
        """
        self._need_dim(1, "quantile")
        # One compiled program per shape: op by op, each of the dozen operations compiles.
        return _quantile(self, jnp.asarray(rho), jnp.asarray(u))

    def _quantile(self, rho: Array, u: Array) -> Array:
        masses = jnp.asarray(rho) * self.dx
        cdf = jnp.concatenate([jnp.zeros(1, masses.dtype), jnp.cumsum(masses)])
        cdf = cdf / cdf[-1]
        u = jnp.asarray(u, dtype=cdf.dtype)
        # The cell whose CDF interval holds u; a zero-mass cell never is (side='right').
        i = jnp.clip(jnp.searchsorted(cdf, u, side="right") - 1, 0, self.num_cells - 1)
        width = cdf[i + 1] - cdf[i]
        frac = jnp.where(width > 0, (u - cdf[i]) / jnp.where(width > 0, width, 1.0), 0.5)
        return self.edges()[i] + self.dx * frac

    def w2(self, p: ArrayLike, q: ArrayLike, *, coarsen: int = 1) -> float:
        """Wasserstein-2 distance between two grid densities (renormalised to unit mass).

        1-D: exact for the piecewise-constant densities, ``int_0^1 |Q_p - Q_q|^2 du`` from the
        quantile functions, which are both linear between the merged CDF breakpoints (two-point
        Gauss–Legendre per piece is then exact). 2-D: POT ``ot.emd2`` on the cell masses with
        squared Euclidean cost between centres, outside ``jit``; at most
        :data:`MAX_EMD_CELLS` occupied cells per side (else use ``coarsen``).

        Args:
            p, q: densities of shape :attr:`shape`.
            coarsen: 2-D only: sum masses over ``coarsen x coarsen`` blocks first (must divide
                ``num_cells``); moves mass by at most ``coarsen dx / sqrt(2)``.

        Returns:
            ``W2`` (not squared), a float.
        """
        p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
        for name, r in (("p", p), ("q", q)):
            if r.shape != self.shape:
                raise ValueError(f"Grid.w2: {name} must have shape {self.shape}, got {r.shape}")
            if not np.all(np.isfinite(r)) or np.any(r < 0) or not r.sum() > 0:
                raise ValueError(f"Grid.w2: {name} must be finite, non-negative, with mass > 0")
        if self.dim == 1:
            return _w2_1d(p, q, np.asarray(self.edges()))
        return _w2_2d(p, q, np.asarray(self.centres()), coarsen)

    def _need_dim(self, dim: int, what: str) -> None:
        if self.dim != dim:
            raise ValueError(f"Grid.{what} needs a {dim}-D grid, this one is {self.dim}-D")


@eqx.filter_jit
def _exp_of(log_prob, points):
    return jnp.exp(log_prob(points))


@eqx.filter_jit
def _quantile(grid: Grid, rho, u):
    return grid._quantile(rho, u)


def _w2_1d(p: np.ndarray, q: np.ndarray, edges: np.ndarray) -> float:
    # Dividing by the last partial sum makes the CDFs end at exactly 1 (monotone, no gap).
    cdfs = [np.concatenate([[0.0], np.cumsum(r) / np.cumsum(r)[-1]]) for r in (p, q)]
    breaks = np.unique(np.concatenate(cdfs))
    lo, width = breaks[:-1], np.diff(breaks)
    lo, width = lo[width > 0], width[width > 0]
    dx = edges[1] - edges[0]

    def quantile(cdf, u):
        i = np.clip(np.searchsorted(cdf, u, side="right") - 1, 0, len(cdf) - 2)
        den = cdf[i + 1] - cdf[i]
        # den = 0 only when u rounded onto 1 past trailing empty cells: a measure-zero point.
        frac = np.divide(u - cdf[i], den, out=np.ones_like(u), where=den > 0)
        return edges[i] + dx * np.clip(frac, 0.0, 1.0)

    total = 0.0
    for node in (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0)):
        u = lo + node * width
        total += 0.5 * np.sum(width * (quantile(cdfs[0], u) - quantile(cdfs[1], u)) ** 2)
    return math.sqrt(total)


def _w2_2d(p: np.ndarray, q: np.ndarray, centres: np.ndarray, coarsen: int) -> float:
    import ot

    n = len(centres)
    if not isinstance(coarsen, (int, np.integer)) or coarsen < 1 or n % coarsen:
        raise ValueError(f"Grid.w2: coarsen must be a positive int dividing {n}, got {coarsen!r}")
    m = n // coarsen
    blocks = lambda r: r.reshape(m, coarsen, m, coarsen).sum(axis=(1, 3))  # noqa: E731
    p, q = blocks(p), blocks(q)
    a = centres.reshape(m, coarsen).mean(1)
    nodes = np.stack(np.meshgrid(a, a, indexing="ij"), -1).reshape(-1, 2)
    p, q = p.ravel() / p.sum(), q.ravel() / q.sum()
    sp, sq = p > 0, q > 0
    if max(sp.sum(), sq.sum()) > MAX_EMD_CELLS:
        raise ValueError(
            f"Grid.w2: {max(sp.sum(), sq.sum())} occupied cells exceed {MAX_EMD_CELLS} (a dense "
            f"POT cost matrix); pass coarsen=2 or more"
        )
    cost = ot.dist(nodes[sp], nodes[sq])
    w2_sq = ot.emd2(p[sp], q[sq], cost, numItermax=_EMD_MAX_ITER)
    return math.sqrt(max(float(w2_sq), 0.0))


# --------------------------------------------------------------------------------------------
# Scharfetter–Gummel fluxes


def bernoulli(z: ArrayLike) -> Array:
    """The Bernoulli function ``B(z) = z / (e^z - 1)``, ``B(0) = 1``, stable for every ``z``.

    Uses ``B(-a) = B(a) + a`` so that only ``a = |z| >= 0`` enters the exponential (no overflow,
    finite gradients), and the Taylor series ``1 - z/2 + z^2/12 - z^4/720`` near 0 (the next term
    is below 1e-16 for ``|z| < 1e-2``).
    """
    z = jnp.asarray(z)
    small = jnp.abs(z) < 1e-2
    zs = jnp.where(small, 1.0, z)  # keeps the unused branch (and its gradient) finite
    a = jnp.abs(zs)
    large = a * jnp.exp(-a) / -jnp.expm1(-a) + jnp.maximum(-zs, 0.0)
    series = 1.0 - z / 2 + z**2 / 12 - z**4 / 720
    return jnp.where(small, series, large)


def scharfetter_gummel_flux(
    rho_left: ArrayLike, rho_right: ArrayLike, v: ArrayLike, diffusion: ArrayLike, dx: float
) -> Array:
    """The Scharfetter–Gummel flux of ``v rho - D rho'`` through a face (digest Sec. 3).

    ``F = (D / dx) [B(-P) rho_L - B(P) rho_R]`` with the cell Péclet number ``P = v dx / D``.
    It is exact for the steady flux of a constant ``v`` between the two cells, becomes upwind
    (``v rho_upwind``) when ``|P| >> 1`` and central (``D (rho_L - rho_R) / dx + v (rho_L +
    rho_R) / 2``) when ``|P| << 1``.
    """
    peclet = jnp.asarray(v) * dx / diffusion
    return diffusion / dx * (bernoulli(-peclet) * rho_left - bernoulli(peclet) * rho_right)


def _sg_rates(v: Array, diffusion: Array, dx: float) -> tuple[Array, Array]:
    """Per-face rates ``(D/dx^2) B(-P)`` (left cell to right) and ``(D/dx^2) B(P)`` (right to left):
    the flux is ``dx (a rho_L - b rho_R)``."""
    peclet = v * dx / diffusion
    scale = diffusion / dx**2
    return scale * bernoulli(-peclet), scale * bernoulli(peclet)


def _implicit_sweep(rho: Array, a: Array, b: Array, h: Array) -> Array:
    """Solve ``(I - h A) rho_new = rho`` along the last axis, ``A`` the SG operator with walls.

    ``A`` has zero column sums (mass) and non-negative off-diagonals, so ``I - h A`` is an
    M-matrix for every ``h > 0``: the step conserves mass and positivity unconditionally.
    """
    zero = jnp.zeros_like(a[..., :1])
    lower = jnp.concatenate([zero, -h * a], -1)
    upper = jnp.concatenate([-h * b, zero], -1)
    diag = 1.0 + h * (jnp.concatenate([a, zero], -1) + jnp.concatenate([zero, b], -1))
    return tridiagonal_solve(lower, diag, upper, rho[..., None])[..., 0]


# --------------------------------------------------------------------------------------------
# Dynamics


class ForwardSDE(eqx.Module):
    """The forward FP equation of ``dx = f(t) x dt + g(t) dw``: ``v = f(t) x``, ``D = g(t)^2 / 2``.

    The solver time is the forward time ``t``.
    """

    sde: SDE

    def drift(self, x: Float[Array, " d"], t: Scalar) -> Float[Array, " d"]:
        return self.sde.drift(x, t)

    def diffusion(self, t: Scalar) -> Float[Array, ""]:
        return 0.5 * self.sde.diffusion(t) ** 2


class ReverseSDE(eqx.Module):
    """The reverse-time SDE in reverse time ``tau = T - t`` (digest Sec. 2, any linear SDE):

    ``dY = [-f(t) Y + g(t)^2 s(Y, t)] dtau + g(t) dB``, so ``v = -f Y + g^2 s`` and ``D = g^2 / 2``.
    With the OU process of the digest (``VPSDE(1, 1, T, convention="pierret")``: ``f = -1``,
    ``g^2 = 2``) this is ``v = y + 2 s``, ``D = 1``.

    Args:
        sde: the forward SDE (its ``T`` is the start of the reverse process).
        score: ``score(x: (d,), t) -> (d,)`` in forward time; a pytree (e.g.
            ``target.score_fn(sde)`` or an equinox module) so that ``jit`` does not recompile.
    """

    sde: SDE
    score: VectorField

    def drift(self, y: Float[Array, " d"], tau: Scalar) -> Float[Array, " d"]:
        t = self.sde.T - tau
        return -self.sde.drift_coef(t) * y + self.sde.diffusion(t) ** 2 * self.score(y, t)

    def diffusion(self, tau: Scalar) -> Float[Array, ""]:
        return 0.5 * self.sde.diffusion(self.sde.T - tau) ** 2

    def probability_flow(self) -> "ReverseODE":
        """The probability-flow ODE with the same score."""
        return ReverseODE(self.sde, self.score)


class ReverseODE(eqx.Module):
    """The probability-flow velocity in reverse time: ``v(y, tau) = -f(t) y + g(t)^2 s(y, t) / 2``
    with ``t = T - tau`` (digest Sec. 2: ``y + s`` for the OU process). Callable as ``v(y, tau)``.
    """

    sde: SDE
    score: VectorField

    def __call__(self, y: Float[Array, " d"], tau: Scalar) -> Float[Array, " d"]:
        t = self.sde.T - tau
        return -self.sde.drift_coef(t) * y + 0.5 * self.sde.diffusion(t) ** 2 * self.score(y, t)


def reverse_times(
    sde: SDE, t_min: float, num_steps: int, *, spacing: Literal["log", "uniform"] = "log"
) -> Float[Array, " num_steps+1"]:
    """Reverse times ``tau`` from 0 (forward ``T``) to ``T - t_min`` (forward ``t_min``).

    ``"log"`` spaces the forward times geometrically, so steps shrink like ``t`` where the score
    of a non-smooth target blows up (digest pitfalls: ``dtau`` must shrink near ``t_0``);
    ``"uniform"`` spaces ``tau`` evenly (e.g. for piecewise-constant controls).

    Args:
        sde: the forward SDE.
        t_min: the early-stopping time ``t_0``, in ``(0, T)``.
        num_steps: number of steps (an int >= 1).
        spacing: ``"log"`` or ``"uniform"``.

    Returns:
        ``(num_steps + 1,)`` increasing reverse times.
    """
    if not 0 < t_min < sde.T:
        raise ValueError(f"reverse_times: t_min must lie in (0, T = {sde.T}), got {t_min!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"reverse_times: num_steps must be an int >= 1, got {num_steps!r}")
    if spacing == "log":
        t = jnp.geomspace(sde.T, t_min, num_steps + 1)
        # geomspace's end points carry round-off; pin them.
        return (sde.T - t).at[0].set(0.0).at[-1].set(sde.T - t_min)
    if spacing == "uniform":
        return jnp.linspace(0.0, sde.T - t_min, num_steps + 1)
    raise ValueError(f"reverse_times: spacing must be 'log' or 'uniform', got {spacing!r}")


def prior_log_prob(sde: SDE) -> Callable:
    """The log-density of the prior ``N(0, prior_variance I)``, batched over leading axes."""
    return eqx.Partial(_normal_log_prob, jnp.asarray(sde.prior_variance, dtype=float))


def _normal_log_prob(variance: Array, x: Array) -> Array:
    x = jnp.asarray(x)
    return -0.5 * jnp.sum(x**2, -1) / variance - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi * variance)


# --------------------------------------------------------------------------------------------
# The solver


def _check_times(name: str, taus) -> None:
    taus_arr = jnp.asarray(taus)
    if taus_arr.ndim != 1 or taus_arr.shape[0] < 2:
        raise ValueError(f"{name}: taus must be a 1-D array of >= 2 times, got {taus_arr.shape}")
    if _is_concrete(taus):
        t = np.asarray(taus)
        if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
            raise ValueError(f"{name}: taus must be finite and strictly increasing, got {t}")


def _check_save_every(name: str, save_every, num_steps: int) -> int:
    if save_every is None:
        return num_steps
    if isinstance(save_every, bool) or not isinstance(save_every, (int, np.integer)):
        raise ValueError(f"{name}: save_every must be a positive int or None, got {save_every!r}")
    if save_every < 1 or num_steps % save_every:
        raise ValueError(
            f"{name}: save_every={save_every} must be >= 1 and divide the number of steps "
            f"{num_steps} (len(taus) - 1)"
        )
    return int(save_every)


def solve_fp(
    dynamics,
    rho0: Float[ArrayLike, "*shape"],
    taus: Float[ArrayLike, " M+1"],
    *,
    grid: Grid,
    save_every: int | None = None,
) -> Float[Array, "..."]:
    """Solve ``d rho / d tau = -div(v rho) + D(tau) Laplace(rho)`` on ``grid`` (digest Sec. 3).

    Scheme: finite volumes with Scharfetter–Gummel face fluxes
    ``F = (D/dx) [B(-P) rho_L - B(P) rho_R]``, ``P = v dx / D``, ``B(z) = z / (e^z - 1)``
    (:func:`scharfetter_gummel_flux`; ``v`` at the face), zero flux through the walls, and the
    linearly implicit Euler step ``(I - h A(tau_mid)) rho_new = rho`` with the operator frozen at
    the step midpoint. In 2-D the step is split, an implicit x-sweep then an implicit y-sweep
    (first-order Lie splitting), each a batch of tridiagonal solves. Deviation from the digest's
    explicit Euler: an M-matrix per step keeps positivity and conserves mass for any step size,
    whereas explicit Euler needs ``h <= dx^2 / (2 d D + 2 dx sum_j max|v_j|)``, i.e. ~1e-6 near
    ``t_0`` for a disconnected-support score. Order: 1 in time, 2 in space for smooth data
    (first order overall with ``h ~ dx``).

    Differentiable end to end (``lax.scan`` over steps; each saving interval is a
    ``jax.checkpoint`` block, so reverse mode stores one density per saved time).

    Args:
        dynamics: an object with ``drift(x: (d,), tau) -> (d,)`` and ``diffusion(tau) -> D > 0``
            (:class:`ForwardSDE`, :class:`ReverseSDE`, ``odesde.control.ControlledSDE``); a pytree
            so that ``jit`` traces its arrays.
        rho0: the initial density on the grid, shape ``grid.shape``.
        taus: ``(M + 1,)`` strictly increasing times, the step boundaries.
        grid: the :class:`Grid`.
        save_every: save the density every this many steps (must divide ``M``); ``None`` for
            the final density only.

    Returns:
        The final density (shape ``grid.shape``), or with ``save_every`` the densities at
        ``taus[::save_every]``, shape ``(M // save_every + 1, *grid.shape)`` (initial included).
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"solve_fp: grid must be an odesde.fp_grid.Grid, got {type(grid).__name__}")
    for method in ("drift", "diffusion"):
        if not callable(getattr(dynamics, method, None)):
            raise TypeError(
                f"solve_fp: dynamics must have drift(x, tau) and diffusion(tau) methods; "
                f"{type(dynamics).__name__} has no {method}"
            )
    rho0 = jnp.asarray(rho0, dtype=float)
    if rho0.shape != grid.shape:
        raise ValueError(f"solve_fp: rho0 must have shape grid.shape = {grid.shape}, got {rho0.shape}")
    if _is_concrete(rho0) and not (np.all(np.isfinite(rho0)) and np.all(np.asarray(rho0) >= 0)):
        raise ValueError("solve_fp: rho0 must be finite and non-negative")
    _check_times("solve_fp", taus)
    taus = jnp.asarray(taus, dtype=float)
    every = _check_save_every("solve_fp", save_every, taus.shape[0] - 1)
    out = _solve(dynamics, rho0, taus, grid, every)
    return out[-1] if save_every is None else out


@eqx.filter_jit
def _solve(dynamics, rho0, taus, grid: Grid, every: int):
    faces = [grid.face_points(axis) for axis in range(grid.dim)]
    shapes = [f.shape[:-1] for f in faces]
    # All faces in one batch: one drift call per step (2-D: x- and y-faces together).
    flat = jnp.concatenate([f.reshape(-1, grid.dim) for f in faces])
    splits = np.cumsum([math.prod(sh) for sh in shapes])[:-1]

    def step(rho, tt):
        t0, t1 = tt
        h, mid = t1 - t0, 0.5 * (t0 + t1)
        diff = jnp.asarray(dynamics.diffusion(mid), dtype=rho.dtype)
        drift = jnp.split(jax.vmap(dynamics.drift, (0, None))(flat, mid), splits)
        for axis in range(grid.dim):
            v = drift[axis][:, axis].reshape(shapes[axis])
            a, b = _sg_rates(v, diff, grid.dx)
            # Sweep along `axis` by moving it last.
            r = jnp.moveaxis(rho, axis, -1)
            r = _implicit_sweep(r, jnp.moveaxis(a, axis, -1), jnp.moveaxis(b, axis, -1), h)
            rho = jnp.moveaxis(r, -1, axis)
        return rho, None

    @jax.checkpoint
    def block(rho, block_taus):
        pairs = jnp.stack([block_taus[:-1], block_taus[1:]], -1)
        return lax.scan(step, rho, pairs)[0]

    num_blocks = (taus.shape[0] - 1) // every
    starts = jnp.arange(num_blocks) * every
    block_taus = jax.vmap(lambda s: lax.dynamic_slice(taus, (s,), (every + 1,)))(starts)

    def outer(rho, bt):
        rho = block(rho, bt)
        return rho, rho

    _, saved = lax.scan(outer, rho0, block_taus)
    return jnp.concatenate([rho0[None], saved])


# --------------------------------------------------------------------------------------------
# Probability-flow densities by characteristics


def _value_and_divergence(velocity: VectorField, x: Array, tau: Array) -> tuple[Array, Array]:
    v, jvp = jax.linearize(lambda y: velocity(y, tau), x)
    jac = jax.vmap(jvp)(jnp.eye(x.shape[0], dtype=x.dtype))  # rows: d v / d x_i
    return v, jnp.trace(jac)


def ode_log_density(
    velocity: VectorField,
    log_prob0: Callable,
    points: Float[ArrayLike, "*batch d"],
    tau_end: float,
    *,
    tau_start: float = 0.0,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int = 100_000,
) -> Float[Array, "*batch"]:
    """Log-density at ``points`` of the ODE flow ``dX/dtau = v(X, tau)`` at ``tau_end``.

    Integrates the characteristics backward from ``points`` at ``tau_end`` to ``tau_start``
    together with ``ell = -int div v dtau`` (instantaneous change of variables; digest Sec. 3,
    here backward from the evaluation points, so no interpolation and 2-D works alike):
    ``log rho_end(x) = log rho_start(X_start) + ell``. The divergence is exact (autodiff
    Jacobian trace; ``d <= 2``).

    Solver: diffrax ``Tsit5`` with a PID step-size controller in the max norm over all points.
    Adaptive because the velocity's Lipschitz constant grows like ``1 / sigma_t^2`` near ``t_0``
    for a disconnected support (and like ``k`` for E1's perturbations): fixed steps would waste
    work early or miss the end; the max norm makes the tolerance hold for every point, not on
    average. No gradient is needed here (use :func:`push_particles` to train).

    Args:
        velocity: ``v(x: (d,), tau) -> (d,)`` (e.g. :class:`ReverseODE`, a control).
        log_prob0: log-density at ``tau_start``, batched over leading axes.
        points: evaluation points, shape ``(..., d)`` (e.g. ``grid.points()``).
        tau_end: the time of the density sought.
        tau_start: the time where ``log_prob0`` holds.
        rtol, atol: the controller's tolerances.
        max_steps: diffrax's step budget.

    Returns:
        ``log rho_end(points)``, shape ``points.shape[:-1]``.
    """
    points = jnp.asarray(points, dtype=float)
    if points.ndim < 1:
        raise ValueError(f"ode_log_density: points must have shape (..., d), got {points.shape}")
    if not tau_end > tau_start:
        raise ValueError(
            f"ode_log_density: need tau_end > tau_start, got tau_end={tau_end}, tau_start={tau_start}"
        )
    flat = points.reshape(-1, points.shape[-1])
    # Times as arrays (traced): one compilation serves every end time (snapshots, sweeps).
    out = _ode_log_density(
        velocity, log_prob0, flat, jnp.asarray(tau_end, dtype=float),
        jnp.asarray(tau_start, dtype=float), rtol, atol, max_steps,
    )
    return out.reshape(points.shape[:-1])


@eqx.filter_jit
def _ode_log_density(velocity, log_prob0, points, tau_end, tau_start, rtol, atol, max_steps):
    def field(tau, state, args):
        x, _ = state
        v, div = jax.vmap(_value_and_divergence, (None, 0, None))(velocity, x, tau)
        return v, div

    # diffrax mixes weak ints and floats internally; strict promotion is for our own code.
    with jax.numpy_dtype_promotion("standard"):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            t0=tau_end,
            t1=tau_start,
            dt0=None,
            y0=(points, jnp.zeros(points.shape[0], points.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=optx.max_norm),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
        )
    x_start, ell = sol.ys
    return log_prob0(x_start[0]) + ell[0]


def push_particles(
    velocity: VectorField,
    x0: Float[ArrayLike, "n d"],
    taus: Float[ArrayLike, " M+1"],
    *,
    save_every: int | None = None,
) -> Float[Array, "..."]:
    """Push particles along ``dX/dtau = v(X, tau)`` with classical RK4 on the steps ``taus``.

    Fixed steps and ``lax.scan`` (with ``jax.checkpoint`` per saving interval) make it cheap to
    differentiate: the ODE counterpart of E3 trains controls through it with a quantile W2 loss.

    Args:
        velocity: ``v(x: (d,), tau) -> (d,)``.
        x0: ``(n, d)`` particles at ``taus[0]``.
        taus: ``(M + 1,)`` strictly increasing times.
        save_every: as in :func:`solve_fp`.

    Returns:
        ``(n, d)`` particles at ``taus[-1]``, or ``(M // save_every + 1, n, d)`` at
        ``taus[::save_every]``.
    """
    x0 = jnp.asarray(x0, dtype=float)
    if x0.ndim != 2:
        raise ValueError(f"push_particles: x0 must have shape (n, d), got {x0.shape}")
    _check_times("push_particles", taus)
    taus = jnp.asarray(taus, dtype=float)
    every = _check_save_every("push_particles", save_every, taus.shape[0] - 1)
    out = _push(velocity, x0, taus, every)
    return out[-1] if save_every is None else out


@eqx.filter_jit
def _push(velocity, x0, taus, every):
    field = jax.vmap(velocity, (0, None))

    def step(x, tt):
        t0, t1 = tt
        h = t1 - t0
        k1 = field(x, t0)
        k2 = field(x + 0.5 * h * k1, t0 + 0.5 * h)
        k3 = field(x + 0.5 * h * k2, t0 + 0.5 * h)
        k4 = field(x + h * k3, t1)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    @jax.checkpoint
    def block(x, block_taus):
        return lax.scan(step, x, jnp.stack([block_taus[:-1], block_taus[1:]], -1))[0]

    num_blocks = (taus.shape[0] - 1) // every
    starts = jnp.arange(num_blocks) * every
    block_taus = jax.vmap(lambda s: lax.dynamic_slice(taus, (s,), (every + 1,)))(starts)
    _, saved = lax.scan(lambda x, bt: (block(x, bt),) * 2, x0, block_taus)
    return jnp.concatenate([x0[None], saved])
