"""Probability-flow ODE: likelihood against exact Gaussian densities, sampling, invertibility."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odesde import flow, targets
from odesde.sde import VESDE, VPSDE


def gaussian_2d():
    return targets.gaussian(jnp.array([0.5, -0.3]), jnp.array([[0.5, 0.1], [0.1, 0.3]]))


def test_flow_nll_of_a_gaussian_matches_the_exact_nll():
    sde, gauss = VPSDE(), gaussian_2d()
    x = gauss.sample(6, key=jax.random.key(0))
    t0 = 1e-5
    exact = -gauss.marginal_log_prob(x, t0, sde=sde)
    # With the exact density at T as the prior, only the solver's error remains.
    prior = gauss.marginal(sde, sde.T)
    nll = flow.negative_log_likelihood(gauss.score_fn(sde), sde, x, t_start=t0,
                                       prior_log_prob=prior.log_prob, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(nll, exact, atol=1e-6)
    loose = flow.negative_log_likelihood(gauss.score_fn(sde), sde, x, t_start=t0,
                                         prior_log_prob=prior.log_prob, rtol=1e-4, atol=1e-4)
    assert 1e-6 < float(jnp.max(jnp.abs(loose - exact))) < 1e-2  # error follows the tolerance
    bpd = flow.negative_log_likelihood(gauss.score_fn(sde), sde, x, t_start=t0,
                                       prior_log_prob=prior.log_prob, rtol=1e-8, atol=1e-8,
                                       unit="bits_per_dim")
    np.testing.assert_allclose(bpd, nll / (2 * math.log(2)), rtol=1e-12)
    # With N(0, I) at T (the VP prior) the error is the prior mismatch: alpha_T = 7e-3.
    standard = targets.gaussian(jnp.zeros(2), jnp.eye(2))
    nll_std = flow.negative_log_likelihood(gauss.score_fn(sde), sde, x, t_start=t0,
                                           prior_log_prob=standard.log_prob, rtol=1e-8,
                                           atol=1e-8)
    assert float(jnp.max(jnp.abs(nll_std - exact))) < 0.02


def test_hutchinson_nll_is_unbiased():
    sde, gauss = VPSDE(), gaussian_2d()
    score = gauss.score_fn(sde)
    x = gauss.sample(1, key=jax.random.key(1))
    prior = gauss.marginal(sde, sde.T)
    exact = -gauss.marginal_log_prob(x[0], 1e-5, sde=sde)  # solver error ~1e-5 << the s.e.
    reps = jnp.repeat(x, 48, axis=0)
    est = flow.negative_log_likelihood(score, sde, reps, divergence_method="hutchinson",
                                       key=jax.random.key(2), prior_log_prob=prior.log_prob)
    se = float(jnp.std(est)) / math.sqrt(len(est))
    assert float(jnp.std(est)) > 0
    assert abs(float(jnp.mean(est) - exact)) < 4 * se


def test_flow_samples_match_the_target_and_the_flow_is_invertible():
    sde = VPSDE()
    mix = targets.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[1.0, 0.0], [-1.0, 0.0]]),
                                  jnp.broadcast_to(0.1 * jnp.eye(2), (2, 2, 2)))
    score = mix.score_fn(sde)
    x = flow.sample(score, sde, 500, 2, key=jax.random.key(3), t_end=1e-3)
    target = mix.marginal(sde, 1e-3)
    assert np.all(np.abs(np.asarray(x.mean(0) - target.mean())) < 5 * np.sqrt(1.1 / 500))
    np.testing.assert_allclose(np.cov(np.asarray(x).T), target.covariance(), atol=0.1)
    assert abs(float(jnp.mean(x[:, 0] > 0)) - 0.5) < 5 * 0.5 / math.sqrt(500)
    # Forward then backward along the ODE returns the starting points.
    back = flow.solve(score, sde, flow.solve(score, sde, x[:20], t0=1e-3, t1=1.0), t0=1.0,
                      t1=1e-3)
    np.testing.assert_allclose(back, x[:20], atol=1e-3)


def test_bad_options_raise_clear_errors():
    sde, gauss = VPSDE(), gaussian_2d()
    with pytest.raises(ValueError, match="needs key"):
        flow.log_likelihood(gauss.score_fn(sde), sde, jnp.zeros(2),
                            divergence_method="hutchinson")
    with pytest.raises(ValueError, match="solver"):
        flow.solve(gauss.score_fn(sde), sde, jnp.zeros((1, 2)), t0=1.0, t1=0.1, solver="rk4")
    with pytest.raises(ValueError, match="times"):
        flow.solve(gauss.score_fn(sde), sde, jnp.zeros((1, 2)), t0=1.0, t1=1.5)
