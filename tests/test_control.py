"""The controllability chapter's core: FP grid solver, characteristics, grid metrics, controls."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from scipy import stats

from odesde import targets
from odesde.control import (
    MLPControl,
    PiecewiseControl,
    QuantileW2Loss,
    SinePerturbedScore,
    TrackingLoss,
    field_profile,
    train_control,
    weighted_score_error,
)
from odesde.fp_grid import (
    ForwardSDE,
    Grid,
    ReverseSDE,
    bernoulli,
    ode_log_density,
    prior_log_prob,
    push_particles,
    reverse_times,
    scharfetter_gummel_flux,
    solve_fp,
)
from odesde.sde import VPSDE
from odesde.training import NonFiniteLossError

# The digest's OU process dx = -x dt + sqrt(2) dw (Pierret's VP convention with beta = 1).
OU = VPSDE(beta_min=1.0, beta_max=1.0, T=3.0, convention="pierret")


def mixture_1d():
    return targets.GaussianMixture(
        jnp.array([0.3, 0.7]), jnp.array([[-1.5], [1.0]]), jnp.array([[[0.2]], [[0.1]]])
    )


def mixture_2d():
    return targets.GaussianMixture(
        jnp.array([0.4, 0.6]),
        jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.25]]]),
    )


def rel_l2(grid, p, q):
    return float(grid.l2(p, q) / grid.l2(q, jnp.zeros_like(q)))


# --- Scharfetter–Gummel flux -----------------------------------------------------------------


def test_bernoulli_values_symmetry_and_gradients():
    z = jnp.array([-800.0, -30.0, -1.0, -0.011, -0.009, 0.0, 1e-5, 0.009, 0.011, 1.0, 30.0, 800.0])
    bern = jax.jit(bernoulli)
    b = bern(z)
    assert np.all(np.isfinite(b)) and np.all(b >= 0)
    # B(-z) = B(z) + z, and the closed form where it is accurate.
    np.testing.assert_allclose(bern(-z), b + z, rtol=1e-14, atol=1e-14)
    mid = np.array([-1.0, -0.011, -0.009, 1e-5, 0.009, 0.011, 1.0])
    np.testing.assert_allclose(bern(mid), mid / np.expm1(mid), rtol=1e-13)
    assert float(b[5]) == 1.0
    grads = jax.jit(jax.vmap(jax.grad(bernoulli)))(z)
    assert np.all(np.isfinite(grads))
    np.testing.assert_allclose(grads[5], -0.5, rtol=1e-14)


def test_sg_flux_limits_upwind_and_central():
    dx, rl, rr = 0.1, 0.7, 0.2
    # Strong drift (|P| = 500): upwind, v rho_upwind.
    for v in (50.0, -50.0):
        flux = scharfetter_gummel_flux(rl, rr, v, 0.01, dx)
        np.testing.assert_allclose(flux, v * (rl if v > 0 else rr), rtol=1e-12)
    # Weak drift: central, with an O(P^2) gap that quarters when v halves.
    gaps = []
    for v in (0.1, 0.05, 0.025):
        central = 1.0 * (rl - rr) / dx + v * (rl + rr) / 2
        gaps.append(abs(float(scharfetter_gummel_flux(rl, rr, v, 1.0, dx)) - central))
    assert gaps[0] > 0
    np.testing.assert_allclose(np.array(gaps[:-1]) / np.array(gaps[1:]), 4.0, rtol=1e-3)
    # No drift: exactly the diffusive flux.
    assert float(scharfetter_gummel_flux(rl, rr, 0.0, 2.0, dx)) == pytest.approx(2.0 * (rl - rr) / dx)


# --- The solver: invariants ------------------------------------------------------------------


def test_reverse_sde_mass_positivity_and_accuracy_1d():
    """Exact score of two intervals down to t0 = 1e-2: mass to round-off and positivity for any
    step (uniform steps leave drifts ~50 with P ~ 2), and R0 for the SDE: from the exact p_T,
    relative L2 error at t0 below 1 %."""
    target = targets.TwoIntervals()
    grid = Grid(256, 6.0)
    dyn = ReverseSDE(OU, target.score_fn(OU))
    rho_T = grid.density(lambda x: target.marginal_log_prob(x, OU.T, sde=OU))
    exact = grid.density(lambda x: target.marginal_log_prob(x, 1e-2, sde=OU))
    for spacing in ("log", "uniform"):
        taus = reverse_times(OU, 1e-2, 500, spacing=spacing)
        rho = solve_fp(dyn, rho_T, taus, grid=grid, save_every=100)
        np.testing.assert_allclose(jax.vmap(grid.mass)(rho), grid.mass(rho_T), rtol=5e-14, atol=0)
        assert float(jnp.min(rho)) >= 0.0
        if spacing == "log":
            assert rel_l2(grid, rho[-1], exact) < 1e-2


# --- The solver: accuracy against exact Gaussian-mixture marginals ---------------------------


def forward_error(target, n, num_steps, dim=1, half_width=6.0, t_end=1.0):
    grid = Grid(n, half_width, dim=dim)
    rho0 = grid.density(target.log_prob)
    rho = solve_fp(ForwardSDE(OU), rho0, jnp.linspace(0.0, t_end, num_steps + 1), grid=grid)
    exact = grid.density(lambda x: target.marginal_log_prob(x, t_end, sde=OU))
    return float(grid.l2(rho, exact))


def observed_orders(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


def test_forward_fp_converges_first_order_with_dt_proportional_to_dx():
    """Implicit Euler (order 1) x SG in space (order 2): order 1 overall when dt ~ dx."""
    errors = [forward_error(mixture_1d(), n, 2 * n) for n in (64, 128, 256)]
    orders = observed_orders(errors)
    assert errors[-1] < 3e-4
    assert np.all(orders >= 0.9), (errors, orders)


def test_forward_fp_space_order_two_with_dt_proportional_to_dx_squared():
    errors = [forward_error(mixture_1d(), n, n * n // 4) for n in (32, 64, 128)]
    orders = observed_orders(errors)
    assert np.all(orders >= 1.8), (errors, orders)


def test_forward_fp_2d_converges_and_conserves_mass():
    """Dimension-split implicit Euler: first order with dt ~ dx, mass to round-off."""
    errors = []
    for n in (20, 40):
        grid = Grid(n, 5.0, dim=2)
        rho0 = grid.density(mixture_2d().log_prob)
        rho = solve_fp(ForwardSDE(OU), rho0, jnp.linspace(0.0, 1.0, n + 1), grid=grid, save_every=n // 4)
        np.testing.assert_allclose(jax.vmap(grid.mass)(rho), grid.mass(rho0), rtol=5e-14, atol=0)
        assert float(jnp.min(rho)) >= 0.0
        exact = grid.density(lambda x: mixture_2d().marginal_log_prob(x, 1.0, sde=OU))
        errors.append(float(grid.l2(rho[-1], exact)))
    assert observed_orders(errors)[0] >= 0.9, errors


# --- Characteristics -------------------------------------------------------------------------


def test_characteristics_density_matches_exact_marginal():
    """Disconnected support, t0 = 1e-2 (the Gaussian mixture is covered in 2-D below)."""
    target = targets.TwoIntervals()
    t0 = 1e-2
    grid = Grid(128, 6.0)
    ode = ReverseSDE(OU, target.score_fn(OU)).probability_flow()
    log_rho = ode_log_density(
        ode, lambda x: target.marginal_log_prob(x, OU.T, sde=OU), grid.points(), OU.T - t0
    )
    exact = grid.density(lambda x: target.marginal_log_prob(x, t0, sde=OU))
    assert rel_l2(grid, jnp.exp(log_rho), exact) < 1e-6


def test_characteristics_density_2d():
    target = mixture_2d()
    grid = Grid(12, 4.0, dim=2)
    ode = ReverseSDE(OU, target.score_fn(OU)).probability_flow()
    log_rho = ode_log_density(
        ode, lambda x: target.marginal_log_prob(x, OU.T, sde=OU), grid.points(), OU.T - 0.05
    )
    exact = target.marginal_log_prob(grid.points(), 0.05, sde=OU)
    np.testing.assert_allclose(log_rho, exact, atol=1e-6)


def test_push_particles_rk4_against_linear_flow():
    """dX/dtau = -X: exp(-tau) x0, fourth order."""
    x0 = jnp.array([[1.0], [-2.0]])
    errors = []
    for m in (10, 20):
        x = push_particles(lambda x, t: -x, x0, jnp.linspace(0.0, 1.0, m + 1))
        errors.append(float(jnp.max(jnp.abs(x - math.exp(-1.0) * x0))))
    assert errors[1] < 1e-7 and errors[0] / errors[1] > 14


# --- Grid metrics ----------------------------------------------------------------------------


def cell_average_gaussian(grid, mean, std):
    edges = np.asarray(grid.edges())
    return jnp.asarray(np.diff(stats.norm.cdf(edges, mean, std)) / grid.dx)


def test_w2_1d_exact_for_gaussians():
    grid = Grid(2048, 8.0)
    p, q = cell_average_gaussian(grid, -0.5, 0.8), cell_average_gaussian(grid, 1.0, 1.3)
    # Cell averages add dx^2 / 12 of variance to each: a dx^2 effect.
    assert grid.w2(p, q) == pytest.approx(math.hypot(1.5, 0.5), abs=2 * grid.dx**2)
    assert grid.w2(p, p) == 0.0


def test_w2_1d_against_pot_on_samples():
    """Quantile W2 of grid densities vs POT's exact 1-D W2 between samples of them."""
    grid = Grid(300, 6.0)
    p = grid.density(lambda x: targets.TwoIntervals().marginal_log_prob(x, 0.05, sde=OU))
    q = grid.density(lambda x: mixture_1d().log_prob(x))
    exact = grid.w2(p, q)
    rng = np.random.default_rng(0)
    n = 200_000
    u = rng.uniform(size=(2, n))
    x, y = np.asarray(grid.quantile(p, u[0])), np.asarray(grid.quantile(q, u[1]))
    empirical = math.sqrt(ot.wasserstein_1d(x, y, p=2))
    assert empirical == pytest.approx(exact, rel=0.02)
    # The samples do follow p: inverse-CDF sampling checked against the grid CDF.
    cdf = np.cumsum(np.asarray(p)) * grid.dx
    ks = np.max(np.abs(np.searchsorted(np.sort(x), np.asarray(grid.edges())[1:]) / n - cdf / cdf[-1]))
    assert ks < 5e-3


def test_w2_2d_pot_translation():
    grid = Grid(24, 4.0, dim=2)
    p = grid.density(lambda x: mixture_2d().log_prob(2.0 * x), normalise=True)
    q = jnp.zeros_like(p).at[3:, :].set(p[:-3, :])  # three cells along x_1
    assert float(jnp.sum(p[-3:])) * grid.cell_volume < 1e-10
    assert grid.w2(p, q) == pytest.approx(3 * grid.dx, rel=1e-6)
    with pytest.raises(ValueError, match="coarsen"):
        grid.w2(p, q, coarsen=5)


def test_l2_and_tv():
    grid = Grid(10, 1.0)
    p, q = jnp.ones(10) / 2, jnp.zeros(10).at[:5].set(1.0)
    assert float(grid.l2(p, q)) == pytest.approx(math.sqrt(10 * 0.25 * 0.2))
    assert float(grid.tv(p, q)) == pytest.approx(0.5)


# --- Differentiation and training ------------------------------------------------------------


def tiny_tracking_problem(n=32, num_steps=16, every=4):
    grid = Grid(n, 4.0)
    target = mixture_1d()
    t0 = 0.5
    taus = reverse_times(OU, t0, num_steps, spacing="uniform")
    rho0 = grid.density(prior_log_prob(OU))
    ref = solve_fp(ReverseSDE(OU, target.score_fn(OU)), rho0, taus, grid=grid, save_every=every)
    return TrackingLoss(grid, rho0, ref, taus, every), OU.T - t0


@pytest.mark.parametrize("dim", [1, 2])
def test_gradients_through_solver_match_finite_differences(dim):
    # Any reference will do here: a shifted Gaussian, not a solve (one compilation less).
    grid = Grid(16 if dim == 1 else 8, 4.0, dim=dim)
    taus = jnp.linspace(0.0, 1.0, 9)
    rho0 = grid.density(prior_log_prob(OU))
    ref = jnp.broadcast_to(grid.density(lambda x: prior_log_prob(OU)(x - 0.5)), (3, *grid.shape))
    loss, horizon = TrackingLoss(grid, rho0, ref, taus, 4), 1.0
    control = PiecewiseControl(dim, 2, horizon, key=jax.random.key(1), init_scale=0.5)
    grads = eqx.filter_grad(loss)(control)
    flat, unravel = jax.flatten_util.ravel_pytree(eqx.filter(control, eqx.is_inexact_array))
    gflat = jax.flatten_util.ravel_pytree(eqx.filter(grads, eqx.is_inexact_array))[0]
    assert np.all(np.isfinite(gflat)) and float(jnp.max(jnp.abs(gflat))) > 0
    params, static = eqx.partition(control, eqx.is_inexact_array)
    f = jax.jit(lambda v: loss(eqx.combine(unravel(v), static)))
    h = 1e-6
    for i in range(0, flat.shape[0], max(1, flat.shape[0] // 6)):
        e = jnp.zeros_like(flat).at[i].set(h)
        fd = (f(flat + e) - f(flat - e)) / (2 * h)
        np.testing.assert_allclose(gflat[i], fd, rtol=1e-5, atol=1e-10)


def test_training_decreases_loss_deterministically():
    loss, horizon = tiny_tracking_problem()
    runs = []
    for _ in range(2):
        control = PiecewiseControl(1, 4, horizon, key=jax.random.key(0))
        runs.append(
            train_control(
                control, loss, num_steps=25, key=jax.random.key(3), learning_rate=0.05, progress=False
            )
        )
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
    assert runs[0].losses[-1] < 0.7 * runs[0].losses[0], runs[0].losses
    assert float(loss(runs[0].control)) < runs[0].losses[0]


def test_wide_baseline_and_ode_quantile_loss_train():
    loss, horizon = tiny_tracking_problem()
    mlp = train_control(
        MLPControl(1, horizon, key=jax.random.key(0), width=8, depth=1), loss, num_steps=5,
        key=jax.random.key(0), progress=False,
    )
    assert mlp.losses[-1] < mlp.losses[0]
    qloss = QuantileW2Loss.from_densities(loss.grid, loss.rho0, loss.reference, loss.taus, 4, 200)
    ode = train_control(
        PiecewiseControl(1, 4, horizon, key=jax.random.key(0)), qloss, num_steps=5,
        key=jax.random.key(0), progress=False,
    )
    assert ode.losses[-1] < ode.losses[0]


def test_nan_guard_names_the_step():
    control = PiecewiseControl(1, 2, 1.0, key=jax.random.key(0))

    def loss(c, key):
        return jnp.sum(c.W) + jnp.where(jax.random.uniform(key) < 2.0, jnp.nan, 0.0)

    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_control(control, loss, num_steps=3, key=jax.random.key(0), progress=False)


# --- E0 / E1 / E2 references -----------------------------------------------------------------


@eqx.filter_jit
def perturbation_norm_sq(score, pts, t):
    delta = jax.vmap(score.perturbation, (0, None))(pts, t)
    weight = jnp.exp(score.target.marginal_log_prob(pts, t, sde=OU))
    return jnp.sum(jnp.sum(delta**2, -1) * weight)


@pytest.mark.parametrize("target", [mixture_1d(), targets.TwoIntervals(), mixture_2d()], ids=["mix", "intervals", "mix2d"])
@pytest.mark.parametrize("frequency", [1.0, 8.0, 64.0])
def test_sine_perturbation_has_fixed_l2_size_at_every_time(target, frequency):
    eta = 0.05
    score = SinePerturbedScore(target, OU, eta=eta, frequency=frequency)
    grid = Grid(4096 if target.dim == 1 else 512, 8.0, dim=target.dim)
    pts = grid.points().reshape(-1, target.dim)
    for t in (1e-2, 0.3, 2.0):
        norm_sq = perturbation_norm_sq(score, pts, jnp.asarray(t)) * grid.cell_volume
        assert float(norm_sq) == pytest.approx(eta**2, rel=1e-5)
    x = pts[len(pts) // 3]
    total = eqx.filter_jit(lambda s, x: s(x, 0.3) - s.score(x, 0.3))(score, x)
    np.testing.assert_allclose(total, score.perturbation(x, 0.3), atol=1e-15)


def test_weighted_score_error():
    target = mixture_1d()
    grid = Grid(2048, 8.0)
    times = jnp.linspace(0.01, 1.0, 5)
    assert float(weighted_score_error(target.score_fn(OU), target, OU, times, grid)) < 1e-25
    perturbed = SinePerturbedScore(target, OU, eta=0.1, frequency=4.0)
    err = weighted_score_error(perturbed, target, OU, times, grid)
    assert float(err) == pytest.approx(0.01 * 0.99, rel=1e-6)


def test_field_profile_gaussian_and_lipschitz_blow_up():
    grid = Grid(64, 3.0)
    times = jnp.array([0.01, 0.1, 1.0])
    gauss = targets.gaussian(jnp.zeros(1), 0.25 * jnp.eye(1))
    prof = field_profile(gauss.score_fn(OU), times, grid.points())
    var = 0.25 * jnp.exp(-2 * times) - jnp.expm1(-2 * times)
    np.testing.assert_allclose(prof.lipschitz, 1 / var, rtol=1e-10)
    np.testing.assert_allclose(prof.max_expansion, -1 / var, rtol=1e-10)
    np.testing.assert_allclose(prof.sup_norm, grid.centres()[-1] / var, rtol=1e-10)
    # Disconnected support: Lipschitz constant grows as t -> 0, at least like 1 / t.
    lip = field_profile(targets.TwoIntervals().score_fn(OU), times, Grid(256, 3.0).points()).lipschitz
    assert np.all(np.diff(np.asarray(lip)) < 0) and float(lip[0] / lip[1]) > 10


# --- Input validation ------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    grid = Grid(16, 4.0)
    rho = jnp.ones(16)
    dyn = ForwardSDE(OU)
    with pytest.raises(ValueError, match="num_cells"):
        Grid(2, 1.0)
    with pytest.raises(ValueError, match="dim must be 1 or 2"):
        Grid(8, 1.0, dim=3)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_fp(dyn, rho, jnp.array([0.0, 0.2, 0.1]), grid=grid)
    with pytest.raises(ValueError, match="save_every=3"):
        solve_fp(dyn, rho, jnp.linspace(0, 1, 5), grid=grid, save_every=3)
    with pytest.raises(ValueError, match=r"rho0 must have shape"):
        solve_fp(dyn, jnp.ones(15), jnp.linspace(0, 1, 5), grid=grid)
    with pytest.raises(ValueError, match="non-negative"):
        solve_fp(dyn, -rho, jnp.linspace(0, 1, 5), grid=grid)
    with pytest.raises(TypeError, match="drift"):
        solve_fp(lambda x, t: x, rho, jnp.linspace(0, 1, 5), grid=grid)
    with pytest.raises(ValueError, match="t_min"):
        reverse_times(OU, 0.0, 10)
    with pytest.raises(ValueError, match="spacing"):
        reverse_times(OU, 0.1, 10, spacing="cubic")
    with pytest.raises(ValueError, match="frequency"):
        SinePerturbedScore(mixture_1d(), OU, eta=0.1, frequency=0.0)
    with pytest.raises(TypeError, match="GaussianMixture or UniformBoxes"):
        SinePerturbedScore(targets.circles2(), OU, eta=0.1, frequency=1.0)
    with pytest.raises(ValueError, match="num_intervals"):
        PiecewiseControl(1, 0, 1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps"):
        train_control(PiecewiseControl(1, 1, 1.0, key=jax.random.key(0)), lambda c, k: 0.0, num_steps=0, key=jax.random.key(0))


def test_piecewise_control_capacity_and_active_intervals():
    horizon = 2.0
    big = PiecewiseControl(2, 3, horizon, key=jax.random.key(0), capacity=5)
    assert big.W.shape == (5, 2, 2) and int(big.num_intervals) == 3
    small = eqx.tree_at(lambda c: (c.W, c.A, c.b), PiecewiseControl(2, 3, horizon, key=jax.random.key(1)),
                        (big.W[:3], big.A[:3], big.b[:3]))
    x = jnp.array([0.3, -0.7])
    for tau in (0.0, 0.5, 0.7, 1.4, 1.99, 2.0):
        np.testing.assert_array_equal(big(x, tau), small(x, tau))
    assert [int(big.interval(t)) for t in (0.0, 0.7, 1.4, 2.5)] == [0, 1, 2, 2]
    # The rows beyond K get zero gradients (Adam leaves them where they are).
    grads = eqx.filter_grad(lambda c: jnp.sum(jax.vmap(lambda t: c(x, t))(jnp.linspace(0, horizon, 9)) ** 2))(big)
    assert np.all(np.asarray(grads.W[3:]) == 0) and np.any(np.asarray(grads.W[:3]) != 0)
    with pytest.raises(ValueError, match="capacity=2 must be >= num_intervals=3"):
        PiecewiseControl(1, 3, 1.0, key=jax.random.key(0), capacity=2)
