"""The six samplers: one-step maps vs the exact recursions, Monte-Carlo covariances, POT."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

from odesde import gaussian, samplers
from odesde.sde import OUSDE, VESDE, VPSDE

PG = VPSDE.pierret_galerne()


def diagonal_score(lam, sde=PG):
    """The exact score of N(0, diag(lam)) noised by `sde`: -x / lambda(t)."""
    lam = jnp.asarray(lam, dtype=float)
    return lambda x, t: -x / sde.marginal_variance(lam, t)


@pytest.mark.parametrize("sde", [PG, VPSDE(convention="song"), OUSDE()], ids=["pg", "song", "ou"])
def test_one_step_map_is_the_exact_recursion(sde):
    """With the linear score, each scheme's step is x -> a x + b z with gaussian's (a^2, b^2)."""
    lam = np.array([0.0, 1e-4, 0.3, 1.0, 5.0, 200.0])
    score = diagonal_score(lam, sde)
    x = jnp.asarray(np.linspace(-1.5, 2.0, lam.size))
    z = jnp.asarray(np.linspace(0.7, -1.1, lam.size))
    T = float(sde.T)
    t, dt = 0.63 * T, 0.013 * T
    t_next = t - dt
    zero = jnp.zeros_like(x)
    for scheme in samplers.SCHEMES:
        a2, b2 = gaussian.step_coefficients(lam, scheme, t, t_next, dt, sde=sde)

        def step(x_, z_, scheme=scheme):
            return samplers.reverse_step(sde, score, scheme, x_, t, t_next, dt, z_)

        ax = step(x, zero)
        bz = step(zero, z)
        np.testing.assert_allclose(ax**2, a2 * x**2, rtol=1e-12, err_msg=scheme)
        np.testing.assert_allclose(bz**2, b2 * z**2, rtol=1e-12, atol=1e-300, err_msg=scheme)
        np.testing.assert_allclose(step(x, z), ax + bz, rtol=1e-12, err_msg=scheme)


def test_time_grid_convention():
    t = samplers.time_grid(5, 0.0, 1.0)
    np.testing.assert_allclose(t, [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-15)
    assert t[-1] == 0.0  # exactly: zero eigenvalues then give lambda(0) = 0
    t = samplers.time_grid(1000, 1e-3, 1.0)
    assert t.shape == (1000,) and t[0] == 1.0 and t[-1] == 1e-3
    np.testing.assert_allclose(np.diff(t), -(1 - 1e-3) / 999, rtol=1e-9)


def random_gaussian(d, seed, smallest=1e-3, largest=200.0):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    return q, np.geomspace(smallest, largest, d)


@pytest.mark.parametrize("scheme", samplers.SCHEMES)
def test_monte_carlo_in_rotated_basis(scheme):
    """The generic samplers with the exact matrix score -Sigma_t^{-1} x, d = 8, both starts.

    1. Sample covariance vs Q diag(v) Q^T entry by entry, in units of its standard error:
       for M samples of N(0, C) (mean known to be 0) C_hat_ij = mean(x_i x_j) has variance
       (C_ii C_jj + C_ij^2) / M; every standardised entry must be below 5 (36 entries: a
       false alarm has probability ~2e-5).
    2. Per eigenvalue (digest Sec. 6): variances along the eigenvectors within 4 sqrt(2/M)
       relative of v_{i, N-1} (v_hat / v has standard deviation sqrt(2/M)); the ODE schemes
       are deterministic, so conditionally on the drawn start they must match to rounding.

    Sample-based W2 is not compared: it is biased upward by about tr(C) / (2M).
    """
    d, m, n_points, eps = 8, 20000, 60, 1e-3
    q, lam = random_gaussian(d, seed=3)
    qj = jnp.asarray(q)

    def score(x, t):
        r = PG.marginal_variance(jnp.asarray(lam), t)
        return -(qj @ ((qj.T @ x) / r))

    key_start, key_run = jax.random.split(jax.random.key(11))
    for start in ("normal", "pT"):
        s0 = np.asarray(gaussian.initial_variance(lam, start))
        x_T = (jnp.sqrt(jnp.asarray(s0)) * jax.random.normal(key_start, (m, d), dtype=float)
               ) @ qj.T
        out = samplers.sample(PG, score, scheme, n_points=n_points, eps=eps, key=key_run,
                              x_T=x_T)
        assert out.shape == (m, d) and out.dtype == jnp.float64
        v = np.asarray(gaussian.final_variances(lam, scheme, n_points=n_points, eps=eps,
                                                start=start))
        cov = q @ np.diag(v) @ q.T
        cov_hat = np.asarray(out.T @ out) / m
        se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / m)
        z = (cov_hat - cov) / se
        assert np.max(np.abs(z)) < 5.0, (scheme, start, np.max(np.abs(z)))
        # The scheme does move the law: the output is far from its start.
        start_cov = q @ np.diag(s0) @ q.T
        assert np.max(np.abs((start_cov - cov) / se)) > 50

        v_hat = np.mean(np.asarray(out @ qj) ** 2, axis=0)
        assert np.all(np.abs(v_hat / v - 1) < 4 * np.sqrt(2 / m)), (scheme, start, v_hat / v)
        if scheme in samplers.ODE_SCHEMES:
            s0_hat = np.mean(np.asarray(x_T @ qj) ** 2, axis=0)
            np.testing.assert_allclose(v_hat, v / s0 * s0_hat, rtol=1e-8)


def test_pot_bures_equals_eigenvalue_formula():
    """POT's Bures-Wasserstein distance (it returns W2, not W2^2) on closed-form covariances."""
    d = 8
    # Well conditioned: scipy's sqrtm inside POT loses digits with the condition number.
    q, lam = random_gaussian(d, seed=5, smallest=0.02, largest=6.0)
    sigma = q @ np.diag(lam) @ q.T
    for scheme in ("em", "heun", "sde", "ode"):
        v = np.asarray(gaussian.final_variances(lam, scheme, n_points=50, eps=1e-3,
                                                start="normal"))
        cov = q @ np.diag(v) @ q.T
        pot = float(ot.gaussian.bures_wasserstein_distance(np.zeros(d), np.zeros(d), cov,
                                                           sigma))
        closed = float(gaussian.w2(v, lam))
        # Machine precision for W2^2 = tr(C + S - 2 (S^1/2 C S^1/2)^1/2): rounding of the
        # trace terms, so an absolute error relative to tr(C + S), not to the small W2^2.
        assert abs(pot**2 - closed**2) <= 1e-13 * (v.sum() + lam.sum()), scheme
        assert closed > 1e-4  # a non-trivial distance


def test_sampler_api():
    lam = np.array([0.1, 2.0])
    score = diagonal_score(lam)
    key = jax.random.key(0)
    x, path = samplers.sample(PG, score, "em", n_points=30, eps=1e-3, key=key, n_samples=5,
                              dim=2, return_trajectory=True)
    assert path.shape == (30, 5, 2)
    np.testing.assert_array_equal(path[-1], x)
    again = samplers.sample(PG, score, "em", n_points=30, eps=1e-3, key=key, n_samples=5, dim=2)
    np.testing.assert_array_equal(x, again)  # same key, same bits
    other = samplers.sample(PG, score, "em", n_points=30, eps=1e-3, key=jax.random.key(1),
                            n_samples=5, dim=2)
    assert not np.allclose(x, other)
    x_T = jnp.ones((3, 2))
    y, y_path = samplers.sample(PG, score, "heun", n_points=30, eps=1e-3, x_T=x_T,
                                return_trajectory=True)  # ODE: no key needed
    np.testing.assert_array_equal(y_path[0], x_T)
    np.testing.assert_array_equal(y_path[-1], y)
    a2 = np.asarray(gaussian.final_variances(lam, "heun", n_points=30, eps=1e-3, start="normal"))
    np.testing.assert_allclose(np.asarray(y) ** 2, np.broadcast_to(a2, (3, 2)), rtol=1e-12)

    with pytest.raises(ValueError, match="scheme='dpm'"):
        samplers.sample(PG, score, "dpm", n_points=30, eps=1e-3, key=key, x_T=x_T)
    with pytest.raises(ValueError, match="key is required"):
        samplers.sample(PG, score, "ddpm", n_points=30, eps=1e-3, x_T=x_T)
    with pytest.raises(ValueError, match="n_samples and dim"):
        samplers.sample(PG, score, "em", n_points=30, eps=1e-3, key=key)
    with pytest.raises(ValueError, match="shape"):
        samplers.sample(PG, score, "em", n_points=30, eps=1e-3, key=key, x_T=jnp.ones(2))
    with pytest.raises(ValueError, match="eps=1.0"):
        samplers.sample(PG, score, "em", n_points=30, eps=1.0, key=key, x_T=x_T)
    with pytest.raises(ValueError, match="n_points=21"):
        samplers.sample(PG, score, "ddpm", n_points=21, eps=0.0, key=key, x_T=x_T)
    ve = VESDE()
    for scheme in ("ei", "ddpm"):
        with pytest.raises(ValueError, match=f"scheme='{scheme}' needs a forward drift"):
            samplers.sample(ve, lambda x, t: -x, scheme, n_points=30, eps=1e-3, key=key,
                            x_T=x_T)
    # A zero eigenvalue at eps = 0: the exact score -x / lambda(0) diverges on Heun's last
    # corrector; the sampler says so instead of returning inf/nan.
    with pytest.raises(FloatingPointError, match="after step 29 of 29"):
        samplers.sample(PG, diagonal_score(np.array([0.0, 1.0])), "heun", n_points=30, eps=0.0,
                        x_T=x_T)
    # Euler-Maruyama and the ODE schemes are defined for VE.
    out = samplers.sample(ve, lambda x, t: -x / (1 + ve.noise_variance(t)), "em", n_points=30,
                          eps=1e-3, key=key, x_T=x_T)
    assert np.all(np.isfinite(out))


# --------------------------------------------------------------------------------------------
# Non-uniform grids (Deveney et al.'s samplers)


def test_deveney_time_grid_is_the_papers():
    from odesde import linear_gap as lg

    t = samplers.deveney_time_grid()
    t_eval, steps = lg.paper_grid()
    assert t.shape == (891,) and t[0] == 10.0 and t[-1] == 0.0
    np.testing.assert_array_equal(t[:-1], t_eval)  # the times the score sees, bit for bit
    np.testing.assert_allclose(-np.diff(t), steps, rtol=1e-9)
    assert t[789] == pytest.approx(0.1375) and t[790] == pytest.approx(0.125)
    assert t[-2] == pytest.approx(0.00125)
    with pytest.raises(ValueError, match="ends at t"):
        samplers.deveney_time_grid(coarse=800)
    with pytest.raises(ValueError, match="coarse=-1"):
        samplers.deveney_time_grid(coarse=-1)


def test_sample_on_grid_uniform_equals_sample():
    lam = np.array([0.1, 2.0])
    score = diagonal_score(lam)
    key = jax.random.key(3)
    times = samplers.time_grid(40, 1e-3, 1.0)
    for scheme in samplers.SCHEMES:
        a = samplers.sample(PG, score, scheme, n_points=40, eps=1e-3, key=key, n_samples=7, dim=2)
        b = samplers.sample_on_grid(PG, score, scheme, times=times, key=key, n_samples=7, dim=2)
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=scheme)


def test_sample_on_grid_last_step_drift_only_and_validation():
    sde = OUSDE()
    score = lambda x, t: -x / sde.marginal_variance(0.3, t)  # noqa: E731
    times = np.array([10.0, 5.0, 1.0, 0.5, 0.1])
    key = jax.random.key(0)
    x, path = samplers.sample_on_grid(sde, score, "em", times=times, key=key, n_samples=4, dim=2,
                                      last_noise=False, return_trajectory=True)
    assert path.shape == (5, 4, 2)
    prev, h, t = path[-2], 0.4, 0.5
    np.testing.assert_allclose(x, prev + h * (prev + score(prev, t)), rtol=1e-14)
    y = samplers.sample_on_grid(sde, score, "em", times=times, key=key, n_samples=4, dim=2)
    assert not np.allclose(x, y)  # with the last noise the output differs
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.sample_on_grid(sde, score, "em", times=[10.0, 1.0, 1.0], key=key, x_T=x)
    with pytest.raises(ValueError, match="beyond the horizon"):
        samplers.sample_on_grid(sde, score, "em", times=[11.0, 1.0], key=key, x_T=x)
    with pytest.raises(ValueError, match=">= 0"):
        samplers.sample_on_grid(sde, score, "euler", times=[1.0, -0.1], x_T=x)
    with pytest.raises(ValueError, match="1-D array"):
        samplers.sample_on_grid(sde, score, "euler", times=[1.0], x_T=x)
    with pytest.raises(ValueError, match="scheme='dpm'"):
        samplers.sample_on_grid(sde, score, "dpm", times=times, key=key, x_T=x)


@pytest.mark.parametrize("scheme", ["em", "euler"])
def test_paper_samplers_match_the_exact_recursions(scheme):
    """EM (last step drift-only) and Euler on the paper grid with the linear score of the
    digest's Gaussian family at eta = 0.5: sample means and covariances vs the exact recursions
    of odesde.linear_gap (5 standard errors per entry)."""
    from odesde import linear_gap as lg

    m_samples = 40000
    model = lg.recommended_model(0.5)
    prior = lg.standard_prior(model)
    x = np.asarray(samplers.sample_on_grid(
        OUSDE(), model.score, scheme, times=samplers.deveney_time_grid(), key=jax.random.key(8),
        n_samples=m_samples, dim=2, last_noise=False))
    law = lg.discrete_moments(model, prior, *lg.paper_grid(), scheme, last_noise=False)
    mu, C = np.asarray(law.mean), np.asarray(law.cov)
    z_mean = np.abs(x.mean(0) - mu) / np.sqrt(np.diag(C) / m_samples)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / m_samples)
    z_cov = np.abs(np.cov(x.T) - C) / se
    assert z_mean.max() < 5 and z_cov.max() < 5, (z_mean, z_cov)
    # Not vacuous: the data law is far from the prior in these units.
    assert np.max(np.abs(mu) / np.sqrt(np.diag(C) / m_samples)) > 50
