"""E2: DSM-trained scores per seed; terminal errors against the weighted score error."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray
from tqdm import tqdm  # text bars: no widget state in executed notebooks

from ... import training
from ...control import (
    weighted_score_error,
)
from ...fp_grid import (
    ReverseODE,
)
from ...nets import ScoreMLP
from ...sde import SDE
from .particles import ode_particles, particle_w2
from .setting import (
    Setup,
    _int_at_least,
    _positive_ints,
    errors,
    ode_density,
    sde_density,
)


class LogTimeDSM(eqx.Module):
    """Denoising score matching with ``log t`` uniform on ``[t_0, T]`` and weight ``sigma_t^2``:
    ``mean sigma_t^2 |s(x_t, t) + z / sigma_t|^2`` (1/2 of the sum over coordinates).

    Uniform times (:class:`odesde.training.DSMLoss`) put one sample in ~300 below ``t = 0.02``,
    where a disconnected support's score is hardest and matters most for the terminal density;
    log-uniform times spread the effort over the scales (the companion's choice for E2).
    Signature as the losses of :mod:`odesde.training`: ``loss(model, x0, key) -> (total, terms)``.
    """

    sde: SDE
    t_min: float = eqx.field(static=True)

    def __call__(self, model, x0, key):
        k_t, k_z = jax.random.split(key)
        log_t = jax.random.uniform(k_t, (x0.shape[0],), dtype=float, minval=math.log(self.t_min),
                                   maxval=math.log(float(self.sde.T)))
        t = jnp.exp(log_t)
        z = jax.random.normal(k_z, x0.shape, dtype=float)
        alpha = jax.vmap(self.sde.mean_scale)(t)[:, None]
        sigma = jax.vmap(self.sde.noise_std)(t)[:, None]
        err = jax.vmap(model)(alpha * x0 + sigma * z, t) + z / sigma
        total = jnp.mean(0.5 * jnp.sum((sigma * err) ** 2, -1))
        return total, {"dsm": total}


def e2_dsm(setup: Setup, *, budgets, widths, key: PRNGKeyArray, num_steps: int,
           num_particles: int, particle_steps: int = 500, batch_size: int = 256,
           learning_rate: float = 3e-3, num_times: int = 48, rtol: float = 1e-6,
           atol: float = 1e-6, n_seeds: int = 1, progress: bool = True) -> list[dict]:
    """E2: small MLP scores trained by DSM on the target, snapshotted at training ``budgets``.

    One run per seed and width (``ScoreMLP``, depth 2, :class:`LogTimeDSM` on ``[t_0, T]``,
    Adam); each snapshot is assessed by the exact weighted score error
    ``int_{t_0}^T int |s - grad log p_t|^2 p_t dx dt`` (grid, trapezoid on ``num_times``
    log-spaced times) and by the terminal errors of the reverse SDE and the PF-ODE with that score.
    Seed ``i`` draws every key from ``jax.random.fold_in(key, i)`` (digest Sec. 5: 3 seeds in the
    full profile); all seeds share the compiled programs.

    Returns:
        One dict per (seed, width, budget): ``seed``, ``width``, ``steps``, ``score_error``,
        ``sde``, ``ode`` (:class:`Errors`; the ODE's W2 from particles), ``final_loss`` (mean
        DSM loss over the last 50 steps).
    """
    budgets = sorted(set(_positive_ints("e2_dsm: budgets", budgets)))
    widths = _positive_ints("e2_dsm: widths", widths)
    n_seeds = _int_at_least("e2_dsm: n_seeds", n_seeds, 1)
    records = []
    for seed in range(n_seeds):
        for r in _e2_one_seed(setup, budgets, widths, jax.random.fold_in(key, seed), num_steps,
                              num_particles, particle_steps, batch_size, learning_rate, num_times,
                              rtol, atol, progress, f" (seed {seed})" if n_seeds > 1 else ""):
            records.append(dict(seed=seed, **r))
    return records


def e2_summary(records: list[dict]) -> dict:
    """E2 over seeds: per (width, budget), the mean and sd over seeds of
    ``sqrt(score_error)``, the SDE's and the ODE's terminal L2 (keys ``root_err``, ``sde_l2``,
    ``ode_l2`` with ``_mean`` and ``_sd``; ``width`` and ``steps`` give the groups, in the order
    of the records)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["width"], r["steps"]), []).append(r)
    out: dict[str, Any] = {"width": [], "steps": []}
    values = {
        "root_err": lambda r: math.sqrt(r["score_error"]),
        "sde_l2": lambda r: r["sde"].l2,
        "ode_l2": lambda r: r["ode"].l2,
    }
    for (width, steps), rs in groups.items():
        out["width"].append(width)
        out["steps"].append(steps)
        for name, get in values.items():
            v = np.asarray([get(r) for r in rs])
            out.setdefault(f"{name}_mean", []).append(float(v.mean()))
            out.setdefault(f"{name}_sd", []).append(float(v.std(ddof=1)) if v.size > 1 else 0.0)
    return {k: np.asarray(v) for k, v in out.items()}


def _e2_one_seed(setup, budgets, widths, key, num_steps, num_particles, particle_steps,
                 batch_size, learning_rate, num_times, rtol, atol, progress, label):
    sde, grid = setup.sde, setup.grid
    loss = LogTimeDSM(sde, setup.t_min)
    optimizer = training.make_optimizer(learning_rate)
    times = jnp.geomspace(setup.t_min, sde.T, num_times)
    exact = setup.exact(setup.t_min)
    step = training.make_step(loss, optimizer, setup.target, batch_size)
    records = []
    for w, width in enumerate(widths):
        k_init, k_train = jax.random.split(jax.random.fold_in(key, w))
        model = ScoreMLP(1, key=k_init, width=width, depth=2, t_max=float(sde.T))
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        losses = []
        with tqdm(total=budgets[-1], desc=f"E2 DSM, width {width}{label}",
                  disable=not progress) as bar:
            for i in range(budgets[-1]):
                model, opt_state, total, _ = step(model, opt_state, jax.random.fold_in(k_train, i))
                total = float(total)
                if not math.isfinite(total):
                    raise training.NonFiniteLossError(i, "loss", total, model)
                losses.append(total)
                bar.update(1)
                if i + 1 in budgets:
                    score_error = float(weighted_score_error(model, setup.target, sde, times, grid))
                    rho_sde = sde_density(setup, model, num_steps)
                    velocity = ReverseODE(sde, model)
                    rho_ode = ode_density(setup, velocity, rtol=rtol, atol=atol)
                    x = ode_particles(setup, velocity, num_particles, particle_steps)
                    records.append(dict(
                        width=width, steps=i + 1, score_error=score_error,
                        sde=errors(grid, rho_sde, exact),
                        ode=errors(grid, rho_ode, exact, w2=particle_w2(setup, x, setup.t_min)),
                        final_loss=float(np.mean(losses[-50:])),
                        sde_density=np.asarray(rho_sde), ode_density=np.asarray(rho_ode),
                    ))
    return records
