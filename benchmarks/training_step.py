"""Steps per second of DSM and Fokker–Planck-regularised training steps, and one grid W2.

Measures, after compilation, on this machine (float64, the project default):

1. Lai et al.: the DSM step and the DSM + score-FPE step (the official preset: one Hutchinson
   probe, three-point finite difference; and the exact variant: exact divergence, ``jvp`` in t)
   for the 2-D MLP (3 x 128, batch 256) and a 784-D MLP (3 x 512, batch 64), with their ratio.
   Target: FP step <= 5x the DSM step in 2-D.
2. Deveney et al.: one DSM step with and without the log-density residual (potential network
   3 x 80, beta = 10, batch 2048, 512 collocation points).
3. One ``grid_w2_squared`` call on a released histogram pair (or random histograms without the
   data).

Usage: ``python benchmarks/training_step.py [--steps N]``. Runs in about two minutes.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from odesde import metrics, nets, targets, training  # noqa: E402
from odesde.sde import OUSDE, VPSDE  # noqa: E402


def steps_per_second(model, loss, data, batch_size, num_steps):
    optimizer = training.make_optimizer(1e-4)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = training.make_step(loss, optimizer, data, batch_size)
    key = jax.random.key(0)
    model, opt_state, total, _ = step(model, opt_state, key)  # compile
    jax.block_until_ready(total)
    start = time.perf_counter()
    for i in range(num_steps):
        model, opt_state, total, _ = step(model, opt_state, jax.random.fold_in(key, i + 1))
    jax.block_until_ready((model, total))
    return num_steps / (time.perf_counter() - start)


def data_fn(dim):
    """Mixture-of-two data sampled directly (avoids a 784 x 784 Cholesky per step)."""

    def sample(key, n):
        k1, k2 = jax.random.split(key)
        sign = jnp.where(jax.random.bernoulli(k1, 0.5, (n, 1)), 1.0, -1.0)
        return 0.5 * sign + jnp.sqrt(0.1) * jax.random.normal(k2, (n, dim))

    return sample


def lai(num_steps):
    sde = VPSDE()
    rows = []
    configs = ((2, 128, 256, num_steps), (784, 512, 64, max(num_steps // 4, 5)))
    for dim, width, batch, steps in configs:
        model = nets.ScoreMLP(dim, key=jax.random.key(1), width=width, depth=3,
                              parametrisation="noise", sde=sde)
        data = data_fn(dim)
        dsm = steps_per_second(model, training.DSMLoss(sde), data, batch, steps)
        official = steps_per_second(model, training.ScoreFPELoss.lai_official(sde), data, batch,
                                    steps)
        row = {"dim": dim, "dsm": dsm, "fp_official": official}
        if dim == 2:
            exact = training.ScoreFPELoss(training.DSMLoss(sde), weight=0.15)
            row["fp_exact"] = steps_per_second(model, exact, data, batch, steps)
        rows.append(row)
    return rows


def deveney(num_steps):
    sde = OUSDE()
    model = nets.PotentialMLP(key=jax.random.key(2), beta=10.0)
    with_fp = training.LogDensityFPLoss.deveney(1.0, num_collocation=512, sde=sde)
    data = targets.checker()
    dsm = steps_per_second(model, with_fp.dsm, data, 2048, num_steps)
    fp = steps_per_second(model, with_fp, data, 2048, num_steps)
    return dsm, fp


def grid_w2():
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = Path(os.environ.get("ODESDE_DATA") or default) / "deveney"
    name = "64_3000000_100000_800_checker_0.0.npy"
    if (folder / f"weights_ode_{name}").exists():
        p, q = np.load(folder / f"weights_ode_{name}"), np.load(folder / f"weights_sde_{name}")
        what = "released checker w_R=0 pair"
    else:
        rng = np.random.default_rng(0)
        p, q = rng.random(4096), rng.random(4096)
        p, q = p / p.sum(), q / q.sum()
        what = "random histograms (released data not found)"
    start = time.perf_counter()
    value = metrics.grid_w2_squared(p, q)
    return time.perf_counter() - start, value, what


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, float64")
    print("\nLai et al. score FPE (steps/s; ratio = DSM rate / FP rate)")
    for row in lai(args.steps):
        line = (f"  d={row['dim']:>3}: DSM {row['dsm']:8.1f}   DSM+FP official "
                f"{row['fp_official']:8.1f}  (ratio {row['dsm'] / row['fp_official']:.1f}x)")
        if "fp_exact" in row:
            line += (f"   DSM+FP exact {row['fp_exact']:8.1f}  "
                     f"(ratio {row['dsm'] / row['fp_exact']:.1f}x)")
        print(line)
    dsm, fp = deveney(args.steps)
    print("\nDeveney et al. potential net, batch 2048 (steps/s)")
    print(f"  DSM {dsm:8.1f}   DSM + log-density residual (512 points) {fp:8.1f}  "
          f"(ratio {dsm / fp:.1f}x; {1e3 / dsm:.1f} vs {1e3 / fp:.1f} ms/step)")
    seconds, value, what = grid_w2()
    print(f"\ngrid_w2_squared on {what}: {seconds:.2f} s (W2^2 = {value:.6f})")


if __name__ == "__main__":
    main()
