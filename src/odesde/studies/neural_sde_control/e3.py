"""E3: width-``d`` piecewise-constant controls (``d`` = 1, 2) against a wide baseline, the seeds
trained as one stack (:class:`SeedSum`)."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ...control import (
    MLPControl,
    PiecewiseControl,
    QuantileW2Loss,
    TrackingLoss,
    train_control,
)
from ...fp_grid import (
    ReverseSDE,
    ode_log_density,
    push_particles,
    solve_fp,
)
from .setting import Setup, _emd_coarsen, _int_at_least, _positive_ints, exact_score


class SeedSum(eqx.Module):
    """``loss`` summed over a stack of independent controls (leading axis: seeds).

    The controls do not interact, so the gradient of the sum is each control's own gradient, and
    Adam (elementwise) trains every member exactly as a run of its own would: one compiled step
    trains all seeds, on batched (better vectorised) solves.
    """

    loss: Callable

    def __call__(self, controls, key: PRNGKeyArray | None = None):
        return jnp.sum(eqx.filter_vmap(lambda c: self.loss(c, key))(controls))


def stack_controls(make: Callable, keys: Array):
    """``make(key)`` for each key, stacked along a leading axis (``eqx.filter_vmap``)."""
    return eqx.filter_vmap(make)(keys)


def unstack(stack, i: int):
    """Member ``i`` of a stack made by :func:`stack_controls`."""
    return jax.tree.map(lambda v: v[i] if eqx.is_array(v) else v, stack)


def _stack_piecewise(dim: int, intervals: list[int], horizon: float, keys: Array, capacity: int):
    """Width-``d`` controls with ``intervals[m]`` intervals from ``keys[m]``, stacked; every
    member has ``capacity`` rows (so one structure for all), the first ``K`` in use."""
    stack = eqx.filter_vmap(
        lambda kk: PiecewiseControl(dim, capacity, horizon, key=kk, capacity=capacity))(keys)
    return eqx.tree_at(lambda c: c.active, stack, jnp.asarray(intervals, dtype=int))


def e3_controls(setup: Setup, *, intervals, key: PRNGKeyArray, adam_steps: int,
                solver_steps: int, num_snapshots: int, num_particles: int = 1000,
                baseline_width: int = 64, learning_rate: float = 5e-2, rtol: float = 1e-6,
                atol: float = 1e-6, n_seeds: int = 1, ode: bool | None = None,
                progress: bool = True) -> dict:
    """E3: width-``d`` piecewise-constant controls ``W_k tanh(A_k x + b_k)`` on ``K`` equal
    intervals (``d`` = the grid's dimension, 1 or 2: 3 or 10 parameters per interval), trained
    through the grid solver to track the exact reverse-OU FP trajectory from ``p_T`` to
    ``p_{t_0}`` (computed with the same solver and steps), the wide baseline
    (:class:`odesde.control.MLPControl`), and in 1-D the ODE counterpart (the same controls,
    trained with the sorted-quantile W2 loss, evaluated in L2 by characteristics; the digest's
    2-D Sinkhorn counterpart is not run).

    Every ``K`` must divide ``solver_steps``, and ``num_snapshots`` must divide it too. Seed ``i``
    draws its keys from ``jax.random.fold_in(key, i)`` (then ``fold_in(., K)``); all ``(K, seed)``
    pairs train together as one stack (:class:`SeedSum`: equal to separate runs, one
    compilation; ``K`` is a value of :class:`odesde.control.PiecewiseControl`, whose capacity is
    the largest ``K``), and so do the wide baseline's seeds.

    Returns:
        A dict: ``intervals``; per-``K`` seed means ``sde_sup_l2``, ``sde_final_l2`` and (1-D)
        ``ode_sup_w2``, ``ode_final_w2``, ``ode_final_l2``, each also per seed as
        ``NAME_seeds`` ``(n_seeds, len(intervals))``; the baseline's ``wide_sup_l2``,
        ``wide_final_l2`` (means) and ``wide_sup_l2_seeds``; ``reference_sup_norm`` (max over
        snapshots of ``||rho_ref||_{L2}``); the loss curves (mean over seeds); seed 0's trained
        controls ``controls_sde``, ``controls_ode`` (by ``K``); ``taus`` of the snapshots,
        ``reference``, seed 0's ``trajectory_sde`` (largest ``K``) and ``trajectory_wide``,
        ``ode_final_density`` (1-D), and ``initial_w2`` (W2 from ``p_T`` to ``p_{t_0}``, the
        distance the control must move mass).
    """
    intervals = _positive_ints("e3_controls: intervals", intervals)
    solver_steps = _int_at_least("e3_controls: solver_steps", solver_steps, 1)
    n_seeds = _int_at_least("e3_controls: n_seeds", n_seeds, 1)
    for k in intervals + [num_snapshots]:
        if solver_steps % k:
            raise ValueError(
                f"e3_controls: solver_steps={solver_steps} must be a multiple of every K in "
                f"intervals={intervals} and of num_snapshots={num_snapshots}")
    grid, sde = setup.grid, setup.sde
    dim = grid.dim
    ode = dim == 1 if ode is None else bool(ode)
    if ode and dim != 1:
        raise ValueError("e3_controls: the ODE counterpart (quantile W2 loss) is 1-D only")
    horizon = setup.horizon
    taus = setup.taus(solver_steps, spacing="uniform")
    every = solver_steps // num_snapshots
    rho0 = setup.start()
    reference = solve_fp(ReverseSDE(sde, exact_score(setup.target, sde)), rho0, taus, grid=grid,
                         save_every=every)
    sde_loss = TrackingLoss(grid, rho0, reference, taus, every)
    seed_keys = [jax.random.fold_in(key, s) for s in range(n_seeds)]
    # One forward program per control type gives the trajectories of all seeds.
    trajectories_of = eqx.filter_jit(eqx.filter_vmap(sde_loss.trajectory))
    l2_to_snapshots = jax.vmap(jax.vmap(grid.l2), in_axes=(0, None))  # (members, J + 1)

    def errors_of(stack):
        traj = trajectories_of(stack)
        return np.asarray(traj), np.asarray(l2_to_snapshots(traj, reference))

    names = ["sde_sup_l2", "sde_final_l2"] + (
        ["ode_sup_w2", "ode_final_w2", "ode_final_l2"] if ode else [])
    per_seed: dict[str, list] = {name: [] for name in names}
    out: dict[str, Any] = dict(controls_sde={}, controls_ode={}, losses_sde={}, losses_ode={})
    if ode:
        ode_loss = QuantileW2Loss.from_densities(grid, rho0, reference, taus, every, num_particles)
        push_all = eqx.filter_jit(eqx.filter_vmap(
            lambda c: push_particles(c, ode_loss.x0, taus, save_every=every)[..., 0]))
    # Every (K, seed) pair is one member of a stack trained at once: K is a value, not a shape
    # (PiecewiseControl's capacity is the largest K), so one compiled step serves the sweep.
    members = [(i, s) for i in range(len(intervals)) for s in range(n_seeds)]
    member_keys = jnp.stack([jax.random.split(jax.random.fold_in(seed_keys[s], intervals[i]), 3)
                             for i, s in members])
    member_k = [intervals[i] for i, _ in members]
    capacity = max(intervals)

    def make_stack(keys):
        return _stack_piecewise(dim, member_k, horizon, keys, capacity)

    def by_interval(values):  # (members, ...) -> (n_seeds, len(intervals), ...)
        values = np.asarray(values)
        out_ = np.empty((n_seeds, len(intervals)) + values.shape[1:], values.dtype)
        for m, (i, s) in enumerate(members):
            out_[s, i] = values[m]
        return out_

    k_train = jax.random.fold_in(key, 100_000)  # unused by these deterministic losses
    trained = train_control(
        make_stack(member_keys[:, 0]), SeedSum(sde_loss), num_steps=adam_steps, key=k_train,
        learning_rate=learning_rate, progress=progress,
        description=f"E3 SDE, d={dim}, K={intervals} x {n_seeds} seed(s)")
    traj, err = errors_of(trained.control)  # (members, J + 1)
    err = by_interval(err)  # (n_seeds, len(intervals), J + 1)
    per_seed["sde_sup_l2"] = list(np.moveaxis(err.max(-1), 1, 0))
    per_seed["sde_final_l2"] = list(np.moveaxis(err[..., -1], 1, 0))
    for i, k in enumerate(intervals):
        m = members.index((i, 0))
        out["controls_sde"][k] = unstack(trained.control, m)
        out["losses_sde"][k] = trained.losses / len(members)  # the stack's mean loss
    out["trajectory_sde"] = traj[members.index((len(intervals) - 1, 0))]
    if ode:
        trained_ode = train_control(
            make_stack(member_keys[:, 1]), SeedSum(ode_loss), num_steps=adam_steps, key=k_train,
            learning_rate=learning_rate, progress=progress,
            description=f"E3 ODE, K={intervals} x {n_seeds} seed(s)")
        x = np.asarray(push_all(trained_ode.control))  # (members, J + 1, n)
        w2 = by_interval(np.sqrt(np.mean((np.sort(x, -1) - np.asarray(ode_loss.quantiles)) ** 2, -1)))
        per_seed["ode_sup_w2"] = list(np.moveaxis(w2.max(-1), 1, 0))
        per_seed["ode_final_w2"] = list(np.moveaxis(w2[..., -1], 1, 0))
        # All members' characteristics in one vmapped adaptive solve (each keeps its own steps).
        rho_ode = jnp.exp(eqx.filter_vmap(
            lambda c: ode_log_density(c, setup.log_prob(sde.T), grid.points(), horizon, rtol=rtol,
                                      atol=atol))(trained_ode.control))
        l2s = jax.vmap(grid.l2, in_axes=(0, None))(rho_ode, reference[-1])
        out["ode_final_density"] = np.asarray(rho_ode[members.index((len(intervals) - 1, 0))])
        per_seed["ode_final_l2"] = list(np.moveaxis(by_interval(l2s), 1, 0))
        for i, k in enumerate(intervals):
            out["controls_ode"][k] = unstack(trained_ode.control, members.index((i, 0)))
            out["losses_ode"][k] = trained_ode.losses / len(members)
    wide_keys = jnp.stack([jax.random.fold_in(sk, 10_000) for sk in seed_keys])
    wide = train_control(
        stack_controls(lambda kk: MLPControl(dim, horizon, key=kk, width=baseline_width), wide_keys),
        SeedSum(sde_loss), num_steps=adam_steps, key=jax.random.fold_in(key, 10_001),
        learning_rate=learning_rate, progress=progress, description=f"E3 wide baseline, d={dim}")
    wtraj, werr = errors_of(wide.control)
    for name, rows in per_seed.items():
        arr = np.stack(rows, axis=1)  # (n_seeds, len(intervals))
        out[f"{name}_seeds"] = arr
        out[name] = arr.mean(0)
        out[f"{name}_sd"] = arr.std(0, ddof=1) if n_seeds > 1 else np.zeros(arr.shape[1])
    out.update(
        intervals=np.asarray(intervals), n_seeds=n_seeds, dim=dim,
        wide_sup_l2=float(werr.max(1).mean()), wide_final_l2=float(werr[:, -1].mean()),
        wide_sup_l2_seeds=werr.max(1),
        wide_sup_l2_sd=float(werr.max(1).std(ddof=1)) if n_seeds > 1 else 0.0,
        losses_wide=wide.losses / n_seeds,
        trajectory_wide=wtraj[0],
        reference=np.asarray(reference), taus=np.asarray(taus[::every]),
        reference_sup_norm=float(np.max(np.asarray(jax.vmap(grid.l2)(reference, 0 * reference)))),
        initial_w2=float(grid.w2(reference[0], reference[-1], coarsen=_emd_coarsen(grid))),
    )
    return out


def decreases(values, slack: float) -> bool:
    """R3's reading of "the tracking error decreases as K grows" (registry ``r3-sde-decreasing``):
    each value at most ``slack`` times the previous one (training noise at a fixed budget), and
    the last strictly below the first.

    Args:
        values: errors in the order of increasing K, at least two.
        slack: the registered factor (>= 1).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"decreases: need a 1-D sequence of at least 2 values, got shape {v.shape}")
    if not slack >= 1.0:
        raise ValueError(f"decreases: slack must be >= 1, got {slack}")
    return bool(np.all(v[1:] <= slack * v[:-1]) and v[-1] < v[0])
