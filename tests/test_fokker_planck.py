"""Residual operators: exact at analytic scores, correct for known perturbations, estimators
unbiased within their standard errors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odesde import fokker_planck as fp
from odesde import targets
from odesde.nets import PotentialMLP, ScoreMLP
from odesde.sde import OUSDE, VESDE, VPSDE

SDES = {"vp": VPSDE(), "ve": VESDE(), "ou": OUSDE(), "vp_pierret": VPSDE.pierret_galerne()}
TIMES = (0.01, 0.1, 0.5, 0.9)


def mixture():
    covs = jnp.array(
        [[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]], [[0.05, -0.02], [-0.02, 0.05]]]
    )
    return targets.GaussianMixture(
        jnp.array([0.2, 0.5, 0.3]), jnp.array([[1.0, 0.5], [-1.0, 0.2], [0.0, -1.5]]), covs
    )


@eqx.filter_jit
def residuals(score, sde, x, t):
    return jax.vmap(lambda xi: fp.score_fpe_residual(score, xi, t, sde=sde))(x)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_exact_mixture_score_has_zero_score_fpe_residual(sde_name):
    sde, mix = SDES[sde_name], mixture()
    x = mix.sample(64, key=jax.random.key(0)) * 1.3
    for t in TIMES:
        xt = mix.marginal(sde, t).sample(64, key=jax.random.key(1))
        r = residuals(mix.score_fn(sde), sde, jnp.concatenate([x, xt]), jnp.asarray(t))
        assert float(jnp.max(jnp.abs(r))) < 1e-8, (sde_name, t)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "ou"])
def test_constant_shift_of_the_score_has_the_predicted_residual(sde_name):
    """``s + eta a`` has residual ``-eta (g^2 J_s^T a - f a)`` (derived by hand); for a Gaussian
    ``N(0, v I)``, ``eta (g^2 / v + f) a``: above 1e-3 everywhere here (VE at t = 0.1 is the
    smallest), 1e5 times the exact score's bound."""
    sde = SDES[sde_name]
    gauss = targets.gaussian(jnp.zeros(3), 0.7 * jnp.eye(3))
    eta, a = 0.1, jnp.array([1.0, -2.0, 0.5])
    shifted = eqx.Partial(lambda g, x, t: g.marginal_score(x, t, sde=sde) + eta * a, gauss)
    x = gauss.sample(16, key=jax.random.key(2))
    for t in (0.1, 0.5):
        v = 0.7 * sde.mean_scale(t) ** 2 + sde.noise_variance(t)
        expected = eta * (sde.diffusion(t) ** 2 / v + sde.drift_coef(t)) * a
        r = residuals(shifted, sde, x, jnp.asarray(t))
        np.testing.assert_allclose(r, jnp.broadcast_to(expected, r.shape), rtol=1e-10)
        assert float(jnp.min(jnp.linalg.norm(r, axis=-1))) > 1e-3


@pytest.mark.parametrize("sde_name", ["vp", "ve", "ou"])
def test_scaled_mixture_score_has_the_predicted_residual(sde_name):
    """``c s`` for the true score ``s`` has residual ``g^2 (c - c^2) J_s^T s`` (derived by hand:
    ``d_t s`` and the linear terms scale with ``c``, ``|s|^2`` with ``c^2``): the closed form
    behind the chapter's control ``scaled-residual``."""
    sde, mix, c = SDES[sde_name], mixture(), 1.05
    scaled = eqx.Partial(lambda m, x, t: c * m.marginal_score(x, t, sde=sde), mix)
    for t in (0.01, 0.3, 0.9):
        x = mix.marginal(sde, t).sample(16, key=jax.random.key(11))
        r = residuals(scaled, sde, x, jnp.asarray(t))

        def expected(xi, t):
            s = mix.marginal_score(xi, t, sde=sde)
            jac = jax.jacfwd(lambda y: mix.marginal_score(y, t, sde=sde))(xi)
            return sde.diffusion(t) ** 2 * (c - c**2) * (jac.T @ s)

        want = jax.vmap(expected, in_axes=(0, None))(x, t)
        np.testing.assert_allclose(r, want, rtol=1e-8, atol=1e-9 * float(jnp.max(jnp.abs(want))))
        assert float(jnp.min(jnp.linalg.norm(want, axis=-1))) > 0


def test_perturbed_mixture_score_has_a_large_residual():
    sde, mix = VPSDE(), mixture()
    bumped = eqx.Partial(
        lambda m, x, t: m.marginal_score(x, t, sde=sde) + 0.1 * jnp.sin(2 * x + t), mix
    )
    x = mix.sample(64, key=jax.random.key(3))
    for t in TIMES:
        r = residuals(bumped, sde, x, jnp.asarray(t))
        assert float(jnp.sqrt(jnp.mean(jnp.sum(r**2, -1)))) > 0.1


def test_gaussian_pen_and_paper_vp():
    """Lai et al. digest, Sec. 1: for ``q_t = N(0, v_t I)`` under VP, ``v' = beta (1 - v)`` and both
    sides of the score FPE equal ``x beta (1 - v) / v^2``."""
    sde, v0 = VPSDE(), 0.3
    gauss = targets.gaussian(jnp.zeros(2), v0 * jnp.eye(2))
    score = gauss.score_fn(sde)
    x = jnp.array([0.7, -1.2])

    @jax.jit
    def sides(t):
        lhs = fp.time_derivative(lambda tt: score(x, tt), t)
        rhs = jax.grad(lambda y: fp.score_fpe_scalar_term(score, y, t, sde=sde))(x)
        return lhs, rhs

    for t in TIMES:
        v = v0 * sde.mean_scale(t) ** 2 + sde.noise_variance(t)
        expected = x * sde.beta(t) * (1 - v) / v**2
        lhs, rhs = sides(jnp.asarray(t))
        np.testing.assert_allclose(lhs, expected, rtol=1e-11)
        np.testing.assert_allclose(rhs, expected, rtol=1e-11)


@eqx.filter_jit
def log_density_residuals(mix, sde, x, t):
    potential = lambda y, tt: mix.marginal_log_prob(y, tt, sde=sde)  # noqa: E731
    return jax.vmap(lambda xi: fp.log_density_fp_residual(potential, xi, t, sde=sde))(x)


@pytest.mark.parametrize("sde_name", ["ou", "vp", "ve"])
def test_exact_log_density_has_zero_log_density_fp_residual(sde_name):
    sde, mix = SDES[sde_name], mixture()
    x = jax.random.uniform(jax.random.key(4), (64, 2), minval=-3.5, maxval=3.5)
    for t in TIMES + (3.0,) * (sde_name == "ou"):
        r = log_density_residuals(mix, sde, x, jnp.asarray(t))
        assert float(jnp.max(jnp.abs(r))) < 1e-9, (sde_name, t)


def test_log_density_residual_is_the_trained_ou_formula_and_shows_the_gauge():
    """Deveney et al. digest, Sec. 3: ``R = d_t phi - d - x.grad phi - |grad phi|^2/2 - Lap phi/2``
    under OU; adding ``c(t)`` to ``phi`` adds ``c'(t)``."""
    net = PotentialMLP(2, key=jax.random.key(5), width=16, beta=10.0)
    x, t = jnp.array([0.4, -0.9]), jnp.asarray(0.37)

    @eqx.filter_jit
    def compute(net):
        phi_t = jax.grad(net.potential, argnums=1)(x, t)
        grad = jax.grad(net.potential)(x, t)
        lap = jnp.trace(jax.hessian(net.potential)(x, t))
        by_hand = phi_t - 2 - x @ grad - 0.5 * grad @ grad - 0.5 * lap
        r = fp.log_density_fp_residual(net.potential, x, t, sde=OUSDE())
        shifted = lambda y, tt: net.potential(y, tt) + jnp.sin(3 * tt)  # noqa: E731
        return by_hand, r, fp.log_density_fp_residual(shifted, x, t, sde=OUSDE())

    by_hand, r, r_shift = compute(net)
    assert float(r) == pytest.approx(float(by_hand), rel=1e-12)
    assert float(r_shift - r) == pytest.approx(3 * math.cos(3 * 0.37), rel=1e-10)


def _hutchinson_variance(jac, probe):
    """Exact variance of one probe's ``v^T J v``: ``sum_{i<j} (J_ij + J_ji)^2`` for Rademacher,
    ``||J + J^T||_F^2 / 2`` for Gaussian."""
    sym = jac + jac.T
    off = jnp.sum(jnp.triu(sym, 1) ** 2)
    return off if probe == "rademacher" else 0.5 * jnp.sum(sym**2)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_divergence_agrees_with_exact_within_its_standard_error(probe):
    net = ScoreMLP(5, key=jax.random.key(6), width=32, depth=2)
    x, t = jnp.linspace(-1.0, 1.0, 5), 0.3
    n = 4000

    @eqx.filter_jit
    def compute(net):
        field = lambda y: net(y, t)  # noqa: E731
        exact = fp.divergence(field, x)
        jac = jax.jacfwd(field)(x)
        est = fp.divergence(field, x, method="hutchinson", key=jax.random.key(7), num_probes=n,
                            probe=probe)
        singles = jax.vmap(
            lambda k: fp.divergence(field, x, method="hutchinson", key=k, probe=probe)
        )(jax.random.split(jax.random.key(8), n))
        return exact, jac, est, singles

    exact, jac, est, singles = compute(net)
    assert float(exact) == pytest.approx(float(jnp.trace(jac)), rel=1e-12)
    se = math.sqrt(float(_hutchinson_variance(jac, probe)) / n)
    assert abs(float(est - exact)) < 4 * se
    # Repeated single-probe estimates have the predicted variance (1/probes scaling at n = 1).
    var = float(_hutchinson_variance(jac, probe))
    assert float(jnp.var(singles)) == pytest.approx(var, rel=0.15)


def test_hutchinson_score_fpe_residual_is_unbiased():
    sde = VPSDE()
    net = ScoreMLP(3, key=jax.random.key(9), width=16, depth=2)
    x, t = jnp.array([0.2, -0.4, 0.9]), 0.4
    n = 2000

    @eqx.filter_jit
    def compute(net):
        exact = fp.score_fpe_residual(net, x, t, sde=sde)
        est = jax.vmap(lambda k: fp.score_fpe_residual(
            net, x, t, sde=sde, divergence_method="hutchinson", key=k
        ))(jax.random.split(jax.random.key(10), n))
        return exact, est

    exact, est = compute(net)
    se = jnp.std(est, axis=0) / math.sqrt(n)
    assert float(jnp.max(jnp.abs(jnp.mean(est, 0) - exact) / se)) < 4.5
    assert float(jnp.min(jnp.std(est, axis=0))) > 0  # the estimator is genuinely random


def test_finite_difference_time_derivative_is_second_order():
    sde, mix = VPSDE(), mixture()
    x = jnp.array([0.3, -0.2])
    fn = lambda tt: mix.marginal_score(x, tt, sde=sde)  # noqa: E731
    t = 0.3

    @jax.jit
    def compute():
        exact = fp.time_derivative(fn, t)
        fds = [
            fp.time_derivative(fn, t, method="finite_difference",
                               steps=(scale * 1e-3, scale * 5e-4))
            for scale in (4.0, 2.0, 1.0)
        ]
        r = fp.score_fpe_residual(mix.score_fn(sde), x, t, sde=sde,
                                  time_derivative_method="finite_difference")
        return exact, fds, r

    exact, fds, r = compute()
    errors = [float(jnp.linalg.norm(fd - exact)) for fd in fds]
    # Halving both steps divides the error by ~4 (second order).
    assert 3.0 < errors[0] / errors[1] < 5.0 and 3.0 < errors[1] / errors[2] < 5.0
    assert errors[2] < 1e-4 * float(jnp.linalg.norm(exact))
    # The official residual with finite differences is close to the exact one at the true score.
    assert float(jnp.max(jnp.abs(r))) < 10 * errors[2]


def test_finite_difference_never_evaluates_negative_times():
    sde = VPSDE()
    net = ScoreMLP(2, key=jax.random.key(11), width=8, depth=1, parametrisation="noise", sde=sde)
    r = eqx.filter_jit(fp.score_fpe_residual)(
        net, jnp.ones(2), 1e-5, sde=sde, time_derivative_method="finite_difference"
    )
    assert bool(jnp.all(jnp.isfinite(r)))


def test_vp_scalar_term_at_the_true_score_has_mean_minus_beta_d_over_two():
    """Lai et al. digest, Sec. 3 caveat: ``E_q[scalar term] = -beta d / 2`` at the true VP score."""
    sde, mix, t = VPSDE(), mixture(), 0.3
    x = mix.marginal(sde, t).sample(20_000, key=jax.random.key(12))
    terms = jax.jit(jax.vmap(
        lambda xi: fp.score_fpe_scalar_term(mix.score_fn(sde), xi, t, sde=sde)
    ))(x)
    se = float(jnp.std(terms)) / math.sqrt(len(terms))
    assert abs(float(jnp.mean(terms)) + float(sde.beta(t))) < 4 * se  # d = 2


def test_bad_options_raise_clear_errors():
    sde, x = VPSDE(), jnp.ones(2)
    score = lambda y, t: -y  # noqa: E731
    with pytest.raises(ValueError, match="needs key"):
        fp.score_fpe_residual(score, x, 0.5, sde=sde, divergence_method="hutchinson")
    with pytest.raises(ValueError, match="allowed are"):
        fp.divergence(lambda y: y, x, method="trace")
    with pytest.raises(ValueError, match="allowed are"):
        fp.time_derivative(lambda t: t, 0.5, method="central")
    with pytest.raises(ValueError, match="num_probes"):
        fp.hutchinson_probes(jax.random.key(0), 0, 2)
