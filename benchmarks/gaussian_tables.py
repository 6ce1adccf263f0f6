"""Benchmark: Pierret & Galerne's full ICML Gaussian grid, JAX core vs a NumPy loop.

The grid: 6 schemes x 5 truncation times x 4 NFE columns x 2 starts of exact ``W2`` errors, on
the CIFAR-10 spectrum (``d = 3072``) and the ADSN texture spectrum (``d = 196,608``), with the
NFE mapping of the digest (``N = NFE`` for em/ei/ddpm/euler, ``NFE // 2`` for Heun,
``NFE // 4`` for RK4).

- JAX: :func:`odesde.gaussian.w2_table`, timed from a cleared compilation cache (compilation
  included), again warm, and once more without its deduplication of equal eigenvalues (the
  same arithmetic work as the reference: ADSN has 131,072 zeros).
- NumPy reference, written here independently from the digest's Sec. 3 table in the paper's
  beta notation: for each (scheme, eps, N) a Python loop over the ``N - 1`` steps, vectorised
  over the eigenvalues (both starts stacked), the way such recursions are usually written.

The same grid cell by cell, as a user would loop over :func:`odesde.gaussian.w2_to_data`
(6 schemes x N in {250, 1000}, eps = 1e-3, start ``normal``), from cleared caches, against the
NumPy loop on the same cells: the single-call API's ratio, compilation included.

Both must agree (relative 1e-9; equal infinities), then the ratio is printed. Spectra come
from :func:`odesde.spectra.load` (published files via ``ODESDE_DATA``) or, when missing, a
power law of the same size.

    python benchmarks/gaussian_tables.py [--spectra cifar10-2025 adsn-fabric] [--cells-only]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import jax
import numpy as np

from odesde import gaussian, spectra

SCHEMES = ("em", "ei", "ddpm", "euler", "heun", "rk4")
EPS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
NFE = (50, 250, 500, 1000)
STARTS = ("pT", "normal")
BETA_MIN, BETA_MAX, T = 0.05, 10.0, 1.0


# --- NumPy reference (digest Sec. 3, paper's notation) ---------------------------------------


def beta(t):
    return BETA_MIN + (BETA_MAX - BETA_MIN) * t


def big_b(t):
    return BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2


def lam_t(lam, t):
    decay = math.exp(-2.0 * big_b(t))
    return decay * lam + (1.0 - decay)


def g_rate(lam, t):
    """The paper's ``g_i`` at forward time ``t``: ``beta (1 - 1 / lambda_i(t))``."""
    return beta(t) * (1.0 - 1.0 / lam_t(lam, t))


def numpy_final_variance(lam, s0, scheme, n_points, eps):
    """``v_{N-1}`` by the per-step recursion, looping over steps; ``s0`` shape (starts, d)."""
    tau = np.linspace(0.0, T - eps, n_points)
    dt = (T - eps) / (n_points - 1)
    v = s0.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(n_points - 1):
            t, t_next = T - tau[k], T - tau[k + 1]
            b_k = beta(t)
            if scheme == "em":
                a = 1.0 + dt * b_k * (1.0 - 2.0 / lam_t(lam, t))
                b2 = 2.0 * dt * b_k
            elif scheme == "ei":
                eta = big_b(t) - big_b(t_next)
                gamma1, two_gamma2 = math.expm1(eta), math.expm1(2.0 * eta)
                a = 1.0 + gamma1 * (1.0 - 2.0 / lam_t(lam, t))
                b2 = two_gamma2
            elif scheme == "ddpm":
                beta_d = 2.0 * dt * b_k
                a = (1.0 - beta_d / lam_t(lam, t)) / math.sqrt(1.0 - beta_d)
                b2 = beta_d
            elif scheme == "euler":
                a = 1.0 + dt * g_rate(lam, t)
                b2 = 0.0
            elif scheme == "heun":
                g0 = g_rate(lam, t)
                a = 1.0 + 0.5 * dt * g0 + 0.5 * dt * g_rate(lam, t_next) * (1.0 + dt * g0)
                b2 = 0.0
            elif scheme == "rk4":
                c1 = g_rate(lam, t)
                g_mid = g_rate(lam, t - 0.5 * dt)
                c2 = g_mid * (1.0 + 0.5 * dt * c1)
                c3 = g_mid * (1.0 + 0.5 * dt * c2)
                c4 = g_rate(lam, t_next) * (1.0 + dt * c3)
                a = 1.0 + dt / 6.0 * (c1 + 2.0 * c2 + 2.0 * c3 + c4)
                b2 = 0.0
            v = a**2 * v + b2
    return v


def numpy_grid(lam, points):
    s0 = np.stack([lam_t(lam, T), np.ones_like(lam)])
    out = np.empty((len(SCHEMES), len(EPS), len(NFE), len(STARTS)))
    with np.errstate(invalid="ignore"):
        for i, scheme in enumerate(SCHEMES):
            for j, eps in enumerate(EPS):
                for k, n in enumerate(points[scheme]):
                    v = numpy_final_variance(lam, s0, scheme, n, eps)
                    out[i, j, k] = np.sqrt(np.sum((np.sqrt(v) - np.sqrt(lam)) ** 2, axis=-1))
    return out


# --- Driver ------------------------------------------------------------------------------------


def get_spectrum(name):
    d = {"cifar10-2025": 3072, "cifar10-2024": 3072, "adsn-fabric": 3 * 256**2}[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a recomputed fallback is not what we time
            return spectra.load(name), name
    except (FileNotFoundError, UserWarning) as err:
        print(f"[{name}] not available ({type(err).__name__}); using a power law, d={d}")
        return spectra.power_law(d, exponent=1.5, largest=200.0, n_zeros=d // 300), "power law"


def agree(x, y, rtol=1e-9):
    """Equal infinities, finite values within ``rtol``; and the largest relative difference."""
    both_inf = np.isposinf(x) & np.isposinf(y)
    with np.errstate(invalid="ignore"):
        rel = np.where(both_inf, 0.0, np.abs(x - y) / np.abs(y))
    return bool(np.all(rel <= rtol)), float(np.max(rel))


def timed(fn):
    """``fn()``, its wall time and its CPU time (all threads: robust to a busy machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def cold():
    """Forget every compiled program: jax's caches and the core's ahead-of-time loops."""
    jax.clear_caches()
    gaussian.tables._compiled_w2_grid.cache_clear()
    gaussian.tables._CELL_JOBS.clear()


CELL_POINTS, CELL_EPS = (250, 1000), 1e-3


def bench_cells(lam):
    """``w2_to_data`` cell by cell (compile included) against the NumPy loop on those cells."""
    def jax_cells():
        return np.array([[gaussian.w2_to_data(lam, s, n_points=n, eps=CELL_EPS, start="normal")
                          for n in CELL_POINTS] for s in SCHEMES])

    def numpy_cells():
        s0 = np.ones((1, lam.size))
        with np.errstate(invalid="ignore"):
            return np.array([[np.sqrt(np.sum((np.sqrt(numpy_final_variance(
                lam, s0, s, n, CELL_EPS)[0]) - np.sqrt(lam)) ** 2)) for n in CELL_POINTS]
                for s in SCHEMES])

    cold()
    jax_vals, t_jax, c_jax = timed(jax_cells)
    _, t_warm, _ = timed(jax_cells)
    np_vals, t_np, c_np = timed(numpy_cells)
    ok, err = agree(jax_vals, np_vals)
    print(f"  cell by cell, w2_to_data ({len(SCHEMES)} schemes x N in {CELL_POINTS}, "
          f"eps {CELL_EPS:g}, start normal):")
    print(f"    JAX (compile included): {t_jax:8.2f} s {c_jax:8.2f} s;  warm {t_warm:.2f} s")
    print(f"    NumPy loop reference:   {t_np:8.2f} s {c_np:8.2f} s")
    print(f"    agree: {ok} (max rel diff {err:.1e});  ratio NumPy / JAX, compile included: "
          f"{t_np / t_jax:.1f}x wall, {c_np / c_jax:.1f}x cpu;  warm: {t_np / t_warm:.1f}x wall")
    if not ok:
        raise SystemExit(f"w2_to_data and NumPy disagree (max rel diff {err:.2e})")
    return t_np / t_jax


def bench(name):
    lam, label = get_spectrum(name)
    lam = gaussian.as_spectrum(lam)
    points = gaussian.table_points(NFE, SCHEMES, heun_points="corrected")
    table = lambda: gaussian.w2_table(lam, schemes=SCHEMES, eps=EPS,  # noqa: E731
                                      n_points=points, starts=STARTS)
    cold()
    jax_vals, t_jax, c_jax = timed(table)
    _, t_warm, c_warm = timed(table)
    # Equal work: the same JAX code with every eigenvalue computed (no deduplication).
    unique = gaussian.tables._unique
    gaussian.tables._unique = lambda values: (values, np.ones_like(values))
    try:
        cold()
        all_vals, t_all, c_all = timed(table)
    finally:
        gaussian.tables._unique = unique
    np_vals, t_np, c_np = timed(lambda: numpy_grid(lam, points))
    ok, err = agree(jax_vals, np_vals)
    ok_all, err_all = agree(all_vals, np_vals)
    print(f"[{name}: {label}, d={lam.size}, {len(np.unique(lam))} distinct eigenvalues]")
    print("                                 wall      cpu")
    print(f"  JAX (compile included):   {t_jax:8.2f} s {c_jax:8.2f} s")
    print(f"  JAX warm:                 {t_warm:8.2f} s {c_warm:8.2f} s")
    print(f"  JAX, no deduplication:    {t_all:8.2f} s {c_all:8.2f} s   (compile included)")
    print(f"  NumPy loop reference:     {t_np:8.2f} s {c_np:8.2f} s")
    print(f"  agree (rtol 1e-9, equal infs): {ok and ok_all}   max rel diff "
          f"{max(err, err_all):.1e}   infinite cells: {int(np.isinf(jax_vals).sum())}")
    print(f"  ratio NumPy / JAX, compile included: {t_np / t_jax:.1f}x wall, "
          f"{c_np / c_jax:.1f}x cpu;  warm: {t_np / t_warm:.1f}x wall;  no deduplication: "
          f"{t_np / t_all:.1f}x wall, {c_np / c_all:.1f}x cpu")
    if not (ok and ok_all):
        raise SystemExit(f"{name}: JAX and NumPy disagree (max rel diff {err:.2e})")
    bench_cells(lam)
    return t_np / t_jax


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", nargs="+", default=["cifar10-2025", "adsn-fabric"],
                        choices=["cifar10-2024", "cifar10-2025", "adsn-fabric"])
    parser.add_argument("--cells-only", action="store_true",
                        help="only the cell-by-cell w2_to_data loop against NumPy")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float64")
    for name in args.spectra:
        if args.cells_only:
            lam, label = get_spectrum(name)
            print(f"[{name}: {label}, d={lam.size}]")
            bench_cells(gaussian.as_spectrum(lam))
        else:
            bench(name)


if __name__ == "__main__":
    main()
