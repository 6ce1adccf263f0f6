"""Benchmark: the Fokker–Planck grid solver, JAX core vs a plain NumPy implementation.

Workload (the controllability chapter's, E0/E1): the reverse-time SDE of the digest's OU process
(``f = -1``, ``g^2 = 2``, ``T = 3``) with the exact score of a Gaussian mixture, from the exact
``p_T`` down to ``t_0 = 1e-2`` on log-spaced steps.

- JAX: :func:`odesde.fp_grid.solve_fp` with :class:`odesde.fp_grid.ReverseSDE` and the target's
  exact score (``targets.GaussianMixture.score_fn``), timed warm (compilation reported apart).
- NumPy, written here from the scheme's formulas: the same Scharfetter–Gummel fluxes, linearly
  implicit Euler with the operator at the step midpoint, x-then-y sweeps in 2-D, each sweep a
  Thomas algorithm vectorised over the other axis; the mixture score in closed form.

Both must agree (max relative difference below 1e-9), then the throughput (cells x steps per
second) and the ratio are printed.

    python benchmarks/fp_solver.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from odesde import targets
from odesde.studies.neural_sde_control import MixtureScore
from odesde.fp_grid import Grid, ReverseSDE, reverse_times, solve_fp
from odesde.sde import VPSDE

OU = VPSDE(beta_min=1.0, beta_max=1.0, T=3.0, convention="pierret")
T0 = 1e-2

CASES = {
    # name: (dim, cells per axis, steps, half width, weights, means, isotropic variances)
    "1-D": (1, 512, 2000, 6.0, [0.3, 0.7], [[-1.5], [1.0]], [0.2, 0.1]),
    "2-D": (2, 64, 400, 5.0, [0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2]),
}
# "2-D*": the 2-D case with the score written in JAX in the NumPy reference's closed form
# (isotropic covariances, no Cholesky): isolates the solver from the generic full-covariance
# score of odesde.targets, which dominates the 2-D time.
CASES["2-D*"] = CASES["2-D"]
# "2-D+": the score the chapter's 2-D experiments use, odesde.studies.neural_sde_control.MixtureScore (the
# generic full-covariance closed form with precisions computed from t alone, not per point).
CASES["2-D+"] = CASES["2-D"]


class IsotropicMixtureScore(eqx.Module):
    """The closed form of :func:`np_mixture_score` in JAX, ``score(x: (d,), t)``."""

    weights: jax.Array
    means: jax.Array
    variances: jax.Array

    def __call__(self, x, t):
        alpha, noise = jnp.exp(-t), -jnp.expm1(-2 * t)
        diff = x - alpha * self.means
        v = alpha**2 * self.variances + noise
        log_r = jnp.log(self.weights) - 0.5 * jnp.sum(diff**2, -1) / v - 0.5 * x.shape[0] * jnp.log(v)
        return -(jax.nn.softmax(log_r) / v) @ diff


# --- NumPy reference -------------------------------------------------------------------------


def np_bernoulli(z):
    small = np.abs(z) < 1e-2
    a = np.abs(np.where(small, 1.0, z))
    large = a * np.exp(-a) / -np.expm1(-a) + np.maximum(-np.where(small, 1.0, z), 0.0)
    return np.where(small, 1.0 - z / 2 + z**2 / 12 - z**4 / 720, large)


def np_mixture_score(x, t, weights, means, variances):
    """Exact OU-noised score of an isotropic Gaussian mixture at points ``x`` (m, d)."""
    alpha, noise = math.exp(-t), -math.expm1(-2 * t)
    m = alpha * means  # (K, d)
    v = alpha**2 * variances + noise  # (K,)
    diff = x[:, None, :] - m[None]  # (m, K, d)
    d = x.shape[1]
    log_r = np.log(weights) - 0.5 * np.sum(diff**2, -1) / v - 0.5 * d * np.log(v)
    r = np.exp(log_r - log_r.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return -np.einsum("mk,mkd->md", r / v, diff)


def np_thomas(lower, diag, upper, rhs):
    """Tridiagonal solve along the last axis, vectorised over the leading axes."""
    n = rhs.shape[-1]
    c, d = np.empty_like(rhs), np.empty_like(rhs)
    c[..., 0] = upper[..., 0] / diag[..., 0]
    d[..., 0] = rhs[..., 0] / diag[..., 0]
    for i in range(1, n):
        den = diag[..., i] - lower[..., i] * c[..., i - 1]
        c[..., i] = upper[..., i] / den
        d[..., i] = (rhs[..., i] - lower[..., i] * d[..., i - 1]) / den
    x = np.empty_like(rhs)
    x[..., -1] = d[..., -1]
    for i in range(n - 2, -1, -1):
        x[..., i] = d[..., i] - c[..., i] * x[..., i + 1]
    return x


def np_solve(rho, taus, centres, dx, dim, score):
    edges = 0.5 * (centres[1:] + centres[:-1])
    grids = [np.meshgrid(*[edges if a == ax else centres for a in range(dim)], indexing="ij") for ax in range(dim)]
    faces = [np.stack(g, -1).reshape(-1, dim) for g in grids]
    shapes = [g[0].shape for g in grids]
    for t0, t1 in zip(taus[:-1], taus[1:]):
        h, mid = t1 - t0, 0.5 * (t0 + t1)
        t = OU.T - mid
        diff = 1.0  # g^2 / 2 for the OU process
        for ax in range(dim):
            v = (faces[ax] + 2.0 * score(faces[ax], t))[:, ax].reshape(shapes[ax])
            peclet = v * dx / diff
            a, b = diff / dx**2 * np_bernoulli(-peclet), diff / dx**2 * np_bernoulli(peclet)
            r, a, b = (np.moveaxis(z, ax, -1) for z in (rho, a, b))
            zero = np.zeros_like(a[..., :1])
            lower = np.concatenate([zero, -h * a], -1)
            upper = np.concatenate([-h * b, zero], -1)
            diag = 1.0 + h * (np.concatenate([a, zero], -1) + np.concatenate([zero, b], -1))
            rho = np.moveaxis(np_thomas(lower, diag, upper, r), -1, ax)
    return rho


# --- The benchmark ---------------------------------------------------------------------------


def run_case(name, repeat):
    dim, n, steps, half_width, weights, means, variances = CASES[name]
    weights, means, variances = (np.asarray(z, float) for z in (weights, means, variances))
    mixture = targets.GaussianMixture(
        jnp.asarray(weights), jnp.asarray(means), jnp.asarray(variances)[:, None, None] * jnp.eye(dim)
    )
    grid = Grid(n, half_width, dim=dim)
    taus = reverse_times(OU, T0, steps)
    rho_T = grid.density(lambda x: mixture.marginal_log_prob(x, OU.T, sde=OU))
    if name.endswith("*"):
        dyn = ReverseSDE(OU, IsotropicMixtureScore(*(jnp.asarray(z) for z in (weights, means, variances))))
    elif name.endswith("+"):
        dyn = ReverseSDE(OU, MixtureScore(mixture, OU))
    else:
        dyn = ReverseSDE(OU, mixture.score_fn(OU))

    start = time.perf_counter()
    out_jax = solve_fp(dyn, rho_T, taus, grid=grid).block_until_ready()
    compile_s = time.perf_counter() - start
    jax_s = min(_timed(lambda: solve_fp(dyn, rho_T, taus, grid=grid).block_until_ready()) for _ in range(repeat))

    score = lambda x, t: np_mixture_score(x, t, weights, means, variances)  # noqa: E731
    args = (np.asarray(rho_T), np.asarray(taus), np.asarray(grid.centres()), grid.dx, dim, score)
    out_np = np_solve(*args)
    np_s = min(_timed(lambda: np_solve(*args)) for _ in range(max(1, repeat - 1)))

    rel = float(np.max(np.abs(np.asarray(out_jax) - out_np)) / np.max(out_np))
    if not rel < 1e-9:
        raise AssertionError(f"{name}: JAX and NumPy disagree, max relative difference {rel:.3e}")
    work = n**dim * steps
    return {
        "case": name,
        "cells": n**dim,
        "steps": steps,
        "jax_s": jax_s,
        "compile_s": compile_s,
        "numpy_s": np_s,
        "jax_rate": work / jax_s,
        "numpy_rate": work / np_s,
        "rel_diff": rel,
    }


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best kept)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rows = [run_case(name, args.repeat) for name in CASES]
    print(f"{'case':5} {'cells':>6} {'steps':>6} {'JAX s':>8} {'compile s':>10} {'NumPy s':>8} "
          f"{'JAX cell-steps/s':>17} {'NumPy cell-steps/s':>19} {'ratio':>7} {'max rel diff':>13}")
    for r in rows:
        print(f"{r['case']:5} {r['cells']:6d} {r['steps']:6d} {r['jax_s']:8.3f} {r['compile_s']:10.2f} "
              f"{r['numpy_s']:8.2f} {r['jax_rate']:17.3e} {r['numpy_rate']:19.3e} "
              f"{r['jax_rate'] / r['numpy_rate']:7.1f} {r['rel_diff']:13.1e}")
    return rows


if __name__ == "__main__":
    main()
