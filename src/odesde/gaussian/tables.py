"""Whole tables of exact ``W2`` errors (Pierret & Galerne's CIFAR-10 and ADSN tables).

Built on the recursions of :mod:`odesde.gaussian.recursions`: :func:`w2_table` computes a
table schemes x eps x columns x starts, with the schemes that share a list of ``N`` in one
compiled loop (one compilation for every ``N``, vectorised over eps, eigenvalues and schemes;
both starts from one pass); :func:`w2_to_data` is one cell of it; :func:`nfe_to_points` and
:func:`table_points` map the paper's NFE budgets to grid points; :func:`format_value` prints a
value as the paper does.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import ArrayLike, Float

from ..samplers import SCHEMES, check_ddpm_steps, check_grid, check_scheme, check_sde_supports
from ..sde import SDE
from ..utils.background import Background
from .recursions import (
    AFFINE_SCHEMES,
    CONTINUOUS,
    HEUN_POINTS,
    PIERRET_GALERNE,
    STARTS,
    Start,
    _check_scheme_grid,
    _check_start,
    _max_steps,
    _propagate,
    _table_scalars,
    _step_tables,
    _unique,
    _validate_common,
    as_spectrum,
    exact_variance,
    initial_variance,
    w2,
)

__all__ = ["format_value", "nfe_to_points", "table_points", "w2_table", "w2_to_data"]


def _sum_over_chunks(lam, weights, per_chunk, chunk):
    """``sqrt`` of the sum over eigenvalue chunks of ``per_chunk((lam_c, weights_c))``.

    Chunks keep a loop's state in cache; they pad with ``lambda = 1`` of weight 0, where every
    scheme is finite.
    """
    d = lam.shape[0]
    chunk = min(chunk, d)
    n_chunks = -(-d // chunk)
    pad = n_chunks * chunk - d
    lam_c = jnp.concatenate([lam, jnp.ones(pad)]).reshape(n_chunks, chunk)
    w_c = jnp.concatenate([weights, jnp.zeros(pad)]).reshape(n_chunks, chunk)
    return jnp.sqrt(jnp.sum(lax.map(per_chunk, (lam_c, w_c)), axis=0))


def _squared_error(v, lam, weights):
    return jnp.sum(weights * (jnp.sqrt(v) - jnp.sqrt(lam)) ** 2, axis=-1)


# LLVM's level 1 vectorises these loops as well as the default, compiling ~40% faster.
@functools.partial(jax.jit, static_argnames=("schemes", "chunk"),
                   compiler_options={"xla_backend_optimization_level": 1})
def _w2_grid(lam, weights, tables, n_points, sde, *, schemes, chunk=2048):
    """W2 to the data for every (scheme, eps, start); shape ``(S, E, n_starts)``."""

    def per_chunk(args):
        lam, weights = args
        s0 = jnp.stack([initial_variance(lam, start, sde=sde) for start in STARTS])

        def per_eps(tables_e):
            v = _propagate(lam, s0, _table_scalars(tables_e), n_points, schemes)
            return _squared_error(v, lam, weights)

        return jax.vmap(per_eps, out_axes=1)(tables)

    return _sum_over_chunks(lam, weights, per_chunk, chunk)


CELL_GROUPS = {"em": "affine", "ei": "affine", "ddpm": "affine", "euler": "affine",
               "heun": "heun", "rk4": "rk4"}
"""The compiled program of each scheme in :func:`w2_to_data`: the four affine schemes share
one (the scheme is a traced index), Heun and RK4 have their own."""


CELL_STEPS = 4096
"""Steps of the step tables in :func:`w2_to_data` (more for a larger ``N``): one compilation
per group serves every ``N`` up to ``CELL_STEPS + 1``."""


@functools.partial(jax.jit, static_argnames=("group", "chunk"),
                   compiler_options={"xla_backend_optimization_level": 1})
def _w2_cell(lam, weights, tables, n_points, affine_index, sde, *, group, chunk=2048):
    """W2 to the data of one scheme at one ``(eps, N)``, from each start; shape ``(n_starts,)``.

    ``tables``: :func:`_step_tables` of one ``eps`` at a fixed length; ``N`` and the affine
    scheme's index are traced: one compilation per group serves every cell of a table.
    """
    tables = jax.tree.map(lambda x: x[0], tables)

    def per_chunk(args):
        lam, weights = args
        s0 = jnp.stack([initial_variance(lam, start, sde=sde) for start in STARTS])
        v = _propagate(lam, s0, _table_scalars(tables), n_points, (group,),
                       affine_index=affine_index)
        return _squared_error(v[0], lam, weights)

    return _sum_over_chunks(lam, weights, per_chunk, chunk)


_CELL_JOBS: dict[tuple, dict[str, Background]] = {}
_CELL_LOCK = threading.Lock()


def _cell_programs(args, first: str, key: tuple) -> dict[str, Background]:
    """The compilations of :func:`_w2_cell` for every group, started at the first call for a
    spectrum size: ``first`` (the caller's group) first, the others in the background while
    the caller computes (a cell-by-cell loop over the schemes needs them next)."""
    with _CELL_LOCK:
        if key not in _CELL_JOBS:
            groups = [first] + [g for g in dict.fromkeys(CELL_GROUPS.values()) if g != first]
            _CELL_JOBS[key] = {g: Background(lambda g=g: _w2_cell.lower(*args, group=g).compile())
                               for g in groups}
        return _CELL_JOBS[key]


@functools.lru_cache(maxsize=64)
def _compiled_w2_grid(d, table_shapes, sde, schemes):
    """:func:`_w2_grid` compiled ahead of time for ``d`` eigenvalues and these table shapes.

    Ahead-of-time so that the compilations of several scheme groups can run in parallel
    threads before the step tables exist; cached here because lowered programs do not share
    ``jax.jit``'s own cache.
    """
    treedef, leaves = table_shapes
    tables = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*leaf) for leaf in leaves])
    lam = jax.ShapeDtypeStruct((d,), jnp.float64)
    n = jax.ShapeDtypeStruct((), jnp.asarray(2).dtype)
    return _w2_grid.lower(lam, lam, tables, n, sde, schemes=schemes).compile()


@functools.partial(jax.jit, static_argnames=("flow",))
def _w2_continuous(lam, weights, eps, sde, *, flow):
    def per_eps(e):
        out = []
        for start in STARTS:
            s0 = initial_variance(lam, start, sde=sde)
            out.append(w2(exact_variance(lam, e, flow=flow, s0=s0, sde=sde), lam,
                          weights=weights))
        return jnp.stack(out)

    return jax.vmap(per_eps)(eps)


def w2_to_data(lam: Float[ArrayLike, " d"], scheme: str, *, n_points: int, eps: float,
               start: Start) -> float:
    """``W2`` between the output of ``scheme`` and the data ``N(0, diag(lam))``.

    Pierret & Galerne's tables: the paper's VP SDE, ``n_points`` grid points (``N - 1``
    steps) uniform in backward time, stopped at forward time ``eps``, started from ``p_T``
    (``"pT"``) or ``N(0, I)`` (``"normal"``); always compared with ``p_0``. ``"sde"`` and
    ``"ode"`` give the exact continuous solutions (``n_points`` ignored). Zero eigenvalues at
    ``eps = 0`` make Heun and RK4 infinite: the result is then ``inf``.

    A cell-by-cell loop costs three compilations in all (:data:`CELL_GROUPS`: em, ei, ddpm
    and euler share one), whatever the ``eps`` and ``N <= CELL_STEPS + 1``; equal to :func:`w2_table`'s cell
    up to round-off.

    Args:
        lam: data eigenvalues (any order; ``-0.0`` allowed).
        scheme: ``"em"``, ``"ei"``, ``"ddpm"``, ``"euler"``, ``"heun"``, ``"rk4"``, ``"sde"``
            or ``"ode"``.
        n_points: ``N``; see :func:`nfe_to_points` for the NFE conventions.
        eps: truncation time, ``0 <= eps < 1``.
        start: ``"pT"`` or ``"normal"``.

    Returns:
        The distance, a Python float.
    """
    if scheme in CONTINUOUS:
        values = w2_table(lam, schemes=(scheme,), eps=(eps,), n_points=(n_points,),
                          starts=(start,))
        return float(values[0, 0, 0, 0])
    lam = as_spectrum(lam)
    sde = PIERRET_GALERNE
    _validate_common(scheme, [eps], float(sde.T))
    _check_start(start)
    _check_scheme_grid(sde, scheme, n_points, eps)
    values, weights = _unique(lam)
    group = CELL_GROUPS[scheme]
    index = AFFINE_SCHEMES.index(scheme) if group == "affine" else 0
    max_steps = max(CELL_STEPS, _max_steps(n_points))
    n = jnp.asarray(n_points)
    args = (jnp.asarray(values), jnp.asarray(weights),
            _step_tables(sde, jnp.asarray([float(eps)]), n, max_steps=max_steps), n,
            jnp.asarray(index), sde)
    _cell_programs(args, group, (values.size, max_steps, sde))[group].result()
    out = _w2_cell(*args, group=group)
    return float(np.asarray(out)[STARTS.index(start)])


def nfe_to_points(nfe: int, scheme: str, *, heun_points: str = "corrected") -> int:
    """Grid points ``N`` of ``scheme`` for a budget of ``nfe`` score evaluations.

    Digest Sec. 3, NFE accounting: ``N = NFE`` for em/ei/ddpm/euler, ``N = NFE // 4`` for
    rk4, and for heun either ``NFE // 2`` (``heun_points="corrected"``: Figure 1 and the
    intended mapping) or ``NFE`` (``"as_published"``: what the ICML appendix table's Heun row
    was computed with, because of an ``if/if/else`` slip in the authors' loop).

    Args:
        nfe: number of function evaluations.
        scheme: one of :data:`odesde.samplers.SCHEMES`.
        heun_points: ``"corrected"`` or ``"as_published"``.

    Returns:
        ``N``, the number of grid points.
    """
    check_scheme(scheme)
    if heun_points not in HEUN_POINTS:
        raise ValueError(f"heun_points={heun_points!r}: allowed are {HEUN_POINTS}")
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe={nfe!r} must be a positive integer")
    if scheme == "heun":
        n = nfe if heun_points == "as_published" else nfe // 2
    elif scheme == "rk4":
        n = nfe // 4
    else:
        n = nfe
    if n < 2:
        raise ValueError(f"nfe={nfe} gives n_points={n} < 2 for scheme={scheme!r}")
    return int(n)


def table_points(
    nfe: Sequence[int], schemes: Sequence[str], *, heun_points: str = "corrected"
) -> dict[str, tuple[int, ...]]:
    """``{scheme: (N per NFE column)}`` for :func:`w2_table` (continuous flows get the NFE)."""
    return {
        s: tuple(nfe) if s in CONTINUOUS else tuple(
            nfe_to_points(n, s, heun_points=heun_points) for n in nfe)
        for s in schemes
    }


def w2_table(
    lam: Float[ArrayLike, " d"],
    *,
    schemes: Sequence[str] = SCHEMES,
    eps: Sequence[float],
    n_points: Sequence[int] | Mapping[str, Sequence[int]],
    starts: Sequence[str] = STARTS,
    sde: SDE = PIERRET_GALERNE,
) -> np.ndarray:
    """A whole table of ``W2(output, p_0)``: schemes x eps x columns x starts.

    Pierret & Galerne's CIFAR/ADSN tables. Schemes sharing the same list of ``N`` run in one
    loop (one compilation for all ``N``, vectorised over eps, eigenvalues and schemes; both
    starts from one pass); repeated eigenvalues are computed once.

    Args:
        lam: data eigenvalues.
        schemes: row blocks; schemes of :data:`odesde.samplers.SCHEMES` or ``"sde"``/``"ode"``
            (the "Continuous" column; the same value in every column).
        eps: truncation times.
        n_points: grid points per column, either one sequence for all schemes (pre-ICML
            table: ``N`` grid points) or ``{scheme: sequence}`` of equal lengths (ICML table:
            see :func:`table_points`).
        starts: ``"pT"`` and/or ``"normal"``.
        sde: the forward SDE.

    Returns:
        float64 array of shape ``(len(schemes), len(eps), n_columns, len(starts))``.
    """
    lam = as_spectrum(lam)
    T = float(sde.T)
    schemes = tuple(schemes)
    eps = tuple(float(e) for e in eps)
    if not schemes or not eps or not starts:
        raise ValueError(f"w2_table needs at least one scheme, eps and start, got "
                         f"schemes={schemes}, eps={eps}, starts={tuple(starts)}")
    for s in schemes:
        _validate_common(s, eps, T)
    for s in starts:
        _check_start(s)
    if isinstance(n_points, Mapping):
        missing = [s for s in schemes if s not in n_points]
        if missing:
            raise ValueError(f"n_points has no entry for schemes {missing}")
        points = {s: tuple(n_points[s]) for s in schemes}
    else:
        points = {s: tuple(n_points) for s in schemes}
    n_cols = {len(p) for p in points.values()}
    if len(n_cols) != 1 or 0 in n_cols:
        raise ValueError(f"n_points must give the same (non-zero) number of columns to every "
                         f"scheme, got "
                         f"{ {s: len(p) for s, p in points.items()} }")
    (n_col,) = n_cols
    for s in dict.fromkeys(schemes):
        if s in CONTINUOUS:
            continue
        check_sde_supports(sde, s)
        for n in points[s]:
            for e in eps:
                check_grid(n, e, T)
                if s == "ddpm":
                    check_ddpm_steps(sde, int(n), e)

    values, weights = _unique(lam)
    lam_j, w_j, eps_j = jnp.asarray(values), jnp.asarray(weights), jnp.asarray(eps)
    out = np.empty((len(schemes), len(eps), n_col, len(STARTS)))
    groups: dict[tuple[int, ...], dict[str, list[int]]] = {}
    for row, s in enumerate(schemes):
        if s in CONTINUOUS:
            res = np.asarray(_w2_continuous(lam_j, w_j, eps_j, sde, flow=s))
            out[row] = res[:, None, :]
        else:
            groups.setdefault(points[s], {}).setdefault(s, []).append(row)

    max_steps = _max_steps(max((n for pts in groups for n in pts), default=2))
    n_struct = jax.ShapeDtypeStruct((), jnp.asarray(2).dtype)
    leaves, treedef = jax.tree.flatten(
        _step_tables.eval_shape(sde, eps_j, n_struct, max_steps=max_steps))
    table_shapes = (treedef, tuple((leaf.shape, leaf.dtype) for leaf in leaves))

    def run_group(pts, group, tables):
        compiled = _compiled_w2_grid(lam_j.shape[0], table_shapes, sde, tuple(group))
        for j, n in enumerate(pts):
            res = np.asarray(compiled(lam_j, w_j, tables[n].result(), jnp.asarray(n), sde))
            for res_s, rows in zip(res, group.values()):
                out[rows, :, j, :] = res_s

    # Each group's loop compiles in its own thread (XLA releases the GIL), heaviest first, while
    # this thread compiles and fills the step tables they will need: cold, the compilations
    # overlap instead of queueing.
    order = sorted(groups.items(), key=lambda g: -sum(g[0]) * len(g[1]))
    with ThreadPoolExecutor(max_workers=len(order) + 1) as pool:
        tables = {n: concurrent.futures.Future() for pts in groups for n in pts}
        futures = [pool.submit(run_group, pts, group, tables) for pts, group in order]
        for n, future in tables.items():
            try:
                future.set_result(_step_tables(sde, eps_j, jnp.asarray(n), max_steps=max_steps))
            except BaseException as err:  # the group threads must not wait forever
                future.set_exception(err)
        for future in futures:
            future.result()
    return out[..., [STARTS.index(s) for s in starts]]


def format_value(x: float) -> str:
    """The paper's printed format: ``0``, ``-`` for ``inf``, ``{:.1E}`` below ``1e-2`` or
    above ``1e2`` (exponent unpadded as printed: ``6.7E-4``, ``1.2E+3``), else two decimals.
    """
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-"
    if x == 0.0:
        return "0"
    if abs(x) < 1e-2 or abs(x) > 1e2:
        mantissa, exponent = f"{x:.1E}".split("E")
        return f"{mantissa}E{int(exponent):+d}".replace("E-0", "E-")
    return f"{x:.2f}"
