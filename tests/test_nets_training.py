"""Networks, losses and the training loop: decrease, NaN guard, determinism, checkpoints."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from odesde import nets, targets, training
from odesde.metrics import jacobian_asymmetry
from odesde.sde import OUSDE, VPSDE


def test_potential_mlp_matches_deveney_architecture_and_is_conservative():
    net = nets.PotentialMLP(key=jax.random.key(0))
    assert nets.count_parameters(net) == 13_361
    assert [layer.weight.shape for layer in net.layers] == [(80, 3), (80, 80), (80, 80), (1, 80)]
    # torch's default initialisation: U(+-1/sqrt(fan_in)) for weights and biases.
    for layer in net.layers:
        bound = 1 / math.sqrt(layer.weight.shape[1])
        assert float(jnp.max(jnp.abs(layer.weight))) <= bound
        assert float(jnp.max(jnp.abs(layer.bias))) <= bound
    x, t = jnp.array([0.3, -0.7]), 0.5
    score, grad, asym = eqx.filter_jit(
        lambda n: (n(x, t), jax.grad(n.potential)(x, t), jacobian_asymmetry(lambda y: n(y, t), x))
    )(net)
    np.testing.assert_allclose(score, grad, rtol=1e-14)
    assert float(asym) < 1e-12


def test_softplus_is_torch_softplus():
    z = jnp.array([-1.0, -0.01, 0.0, 0.05, 0.19, 0.21, 3.0])
    out = nets.softplus(z, beta=100.0, threshold=20.0)
    # Below the threshold: log(1 + e^{beta z}) / beta; above (beta z > 20): exactly z.
    np.testing.assert_allclose(out[:5], np.log1p(np.exp(100 * np.asarray(z[:5]))) / 100, rtol=1e-13)
    np.testing.assert_array_equal(out[5:], z[5:])
    assert bool(jnp.all(jnp.isfinite(jax.vmap(jax.grad(nets.softplus))(z * 1e3))))


def test_score_mlp_parametrisations_and_frozen_fourier_features():
    sde = VPSDE()
    key = jax.random.key(1)
    direct = nets.ScoreMLP(3, key=key, width=16, depth=2, embedding="fourier")
    noise = nets.ScoreMLP(3, key=key, width=16, depth=2, embedding="fourier",
                          parametrisation="noise", sde=sde)
    x, t = jnp.array([0.1, 0.2, -0.3]), 0.4
    np.testing.assert_allclose(noise(x, t), -direct(x, t) / sde.noise_std(t), rtol=1e-13)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x, t) ** 2))(direct)
    assert float(jnp.max(jnp.abs(grads.embedding.weights))) == 0.0
    assert direct(x, t).shape == (3,)
    with pytest.raises(ValueError, match="needs sde"):
        nets.ScoreMLP(3, key=key, parametrisation="noise")
    with pytest.raises(ValueError, match="activation"):
        nets.ScoreMLP(3, key=key, activation="swish2")


def toy_data():
    return targets.GaussianMixture(
        jnp.array([0.5, 0.5]), jnp.array([[1.5, 0.0], [-1.5, 0.0]]),
        jnp.broadcast_to(0.1 * jnp.eye(2), (2, 2, 2)),
    )


def small_net(key=0):
    return nets.ScoreMLP(2, key=jax.random.key(key), width=16, depth=1,
                         parametrisation="noise", sde=VPSDE())


def test_training_decreases_the_dsm_loss():
    sde, data = VPSDE(), toy_data()
    loss = training.DSMLoss(sde, weighting="sigma2", reduction="mean", t_min=1e-3)
    # Evaluate with common random numbers on a fixed large batch, before and after.
    x0 = data.sample(4096, key=jax.random.key(2))
    evaluate = eqx.filter_jit(lambda m: loss(m, x0, jax.random.key(3))[0])
    model = small_net()
    result = training.train(model, loss, data, num_steps=150, batch_size=256,
                            key=jax.random.key(4), optimizer=training.make_optimizer(3e-3),
                            progress=False)
    before, after = float(evaluate(model)), float(evaluate(result.model))
    assert after < 0.7 * before, (before, after)
    assert result.losses.shape == (150,) and set(result.terms) == {"dsm", "grad_norm"}


def test_fp_losses_vanish_at_exact_scores():
    """At the exact score the score-FPE term is round-off and the Deveney residual of the exact
    log-density is round-off (a model exposing ``potential``)."""
    data = toy_data()
    sde = VPSDE()
    exact = data.score_fn(sde)
    fpe = training.ScoreFPELoss(training.DSMLoss(sde, t_min=1e-2), weight=1.0)
    x0 = data.sample(64, key=jax.random.key(5))
    _, terms = eqx.filter_jit(fpe)(exact, x0, jax.random.key(6))
    assert float(terms["fp"]) < 1e-16

    class ExactPotential(eqx.Module):
        mix: targets.GaussianMixture

        def potential(self, x, t):
            return self.mix.marginal_log_prob(x, t, sde=OUSDE())

        def __call__(self, x, t):
            return jax.grad(self.potential)(x, t)

    ld = training.LogDensityFPLoss.deveney(1.0, num_collocation=64)
    _, terms = eqx.filter_jit(ld)(ExactPotential(data), x0, jax.random.key(7))
    assert float(terms["fp"]) < 1e-18


def test_official_lai_preset_and_deveney_preset_train_one_step_each():
    sde = VPSDE()
    lai = training.ScoreFPELoss.lai_official(sde)
    assert (lai.weight, lai.scalar_weight, lai.power) == (0.15, 0.01, 2.0)
    assert lai.divergence_method == "hutchinson" and lai.num_probes == 1
    assert lai.time_derivative_method == "finite_difference" and lai.fp_weighting == "likelihood"
    r = training.train(small_net(), lai, toy_data(), num_steps=2, batch_size=16,
                       key=jax.random.key(8), progress=False)
    assert set(r.terms) == {"dsm", "fp", "scalar", "grad_norm"}
    dev = training.LogDensityFPLoss.deveney(0.1, num_collocation=16)
    assert dev.dsm.time_sampling == "beta12" and dev.dsm.weighting == "none"
    pot = nets.PotentialMLP(key=jax.random.key(9), width=8, depth=1, beta=10.0)
    r = training.train(pot, dev, targets.checker(), num_steps=2, batch_size=16,
                       key=jax.random.key(10), progress=False,
                       optimizer=training.make_optimizer(training.deveney_schedule(2)))
    assert np.all(np.isfinite(r.losses)) and set(r.terms) == {"dsm", "fp", "grad_norm"}


class Scalar(eqx.Module):
    w: jax.Array


def descending_loss(model, x0, key):
    """Total ``w`` (SGD lowers ``w`` by the learning rate each step); ``fp = log w`` goes NaN
    once ``w < 0``."""
    return model.w, {"dsm": model.w, "fp": jax.lax.stop_gradient(jnp.log(model.w))}


def test_nan_guard_raises_naming_step_and_term():
    data = lambda key, n: jnp.zeros((n, 1))  # noqa: E731
    # w = 1.0, 0.7, 0.4, 0.1 at steps 0-3, then -0.2 at step 4: log is NaN there.
    with pytest.raises(training.NonFiniteLossError, match="fp .* at step 4") as info:
        training.train(Scalar(jnp.array(1.0)), descending_loss, data, num_steps=10,
                       batch_size=1, key=jax.random.key(0), optimizer=optax.sgd(0.3),
                       progress=False)
    assert info.value.step == 4 and info.value.term == "fp"
    assert float(info.value.model.w) == pytest.approx(-0.2)


# One optimiser object for every run: equal inputs share one compiled step.
OPTIMIZER = training.make_optimizer(1e-3, warmup_steps=3, grad_clip=1.0)


def run(key, num_steps, **kwargs):
    loss = training.DSMLoss(VPSDE(), t_min=1e-3)
    return training.train(small_net(), loss, toy_data(), num_steps=num_steps, batch_size=32,
                          key=jax.random.key(key), progress=False, optimizer=OPTIMIZER, **kwargs)


def leaves(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))


def test_same_seed_same_loss_curve_and_resume_gives_the_uninterrupted_curve(tmp_path):
    full = run(11, 8)
    again = run(11, 8)
    np.testing.assert_array_equal(full.losses, again.losses)
    assert not np.array_equal(full.losses, run(12, 8).losses)

    path = tmp_path / "ckpt" / "model.eqx"
    first = run(11, 5, checkpoint_path=path, checkpoint_every=2)
    np.testing.assert_array_equal(first.losses, full.losses[:5])
    resumed = run(11, 8, checkpoint_path=path)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    for name in full.terms:
        np.testing.assert_array_equal(resumed.terms[name], full.terms[name])
    for a, b in zip(leaves(resumed.model), leaves(full.model)):
        np.testing.assert_array_equal(a, b)
    # Only the checkpoint is left: temporary files were renamed into place.
    assert [p.name for p in path.parent.iterdir()] == ["model.eqx"]

    model = training.load_model(path, small_net(), OPTIMIZER)
    for a, b in zip(leaves(model), leaves(full.model)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="key"):
        run(13, 9, checkpoint_path=path)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="weighting"):
        training.DSMLoss(VPSDE(), weighting="ll")
    with pytest.raises(ValueError, match="time_sampling"):
        training.DSMLoss(VPSDE(), time_sampling="beta")
    with pytest.raises(ValueError, match="fp_weighting"):
        training.ScoreFPELoss(training.DSMLoss(VPSDE()), fp_weighting="ll")
    with pytest.raises(TypeError, match="data"):
        training.make_step(training.DSMLoss(VPSDE()), optax.adam(1e-3), 3, 8)


def test_loss_weights_are_array_leaves_and_equal_settings_share_one_compiled_step():
    from odesde.studies.score_fpe import CompileCounter

    sde, data = VPSDE(), toy_data()
    a = training.ScoreFPELoss(training.DSMLoss(sde, t_min=1e-2), weight=1e-3, scalar_weight=0.1)
    b = training.ScoreFPELoss(training.DSMLoss(sde, t_min=1e-2), weight=0.5, scalar_weight=0.2)
    assert a.weight.shape == () and a.weight.dtype == jnp.float64
    # The weights act as before: total = dsm + weight fp + scalar_weight scalar.
    x0 = data.sample(32, key=jax.random.key(0))
    total, terms = eqx.filter_jit(b)(small_net(), x0, jax.random.key(1))
    np.testing.assert_allclose(total, terms["dsm"] + 0.5 * terms["fp"] + 0.2 * terms["scalar"],
                               rtol=1e-12)
    # Equal settings give the same optimiser object; an array learning rate still works.
    assert training.make_optimizer(1e-3) is training.make_optimizer(0.001)
    assert training.make_optimizer(1e-3) is not training.make_optimizer(1e-3, grad_clip=1.0)
    assert training.make_optimizer(jnp.asarray(1e-3)) is not training.make_optimizer(1e-3)
    assert training.deveney_schedule(100, 1e-3) is training.deveney_schedule(100, 1e-3)
    assert training.lai_optimizer() is training.lai_optimizer()
    # One compilation serves both weights (the step is compiled ahead of time here).
    with CompileCounter() as ahead:
        training.compile_step(a, training.make_optimizer(2e-3), data, 16, small_net())
    assert "jit(_train_step)" in ahead.names, ahead.names
    with CompileCounter() as counter:
        for loss in (a, b):
            training.train(small_net(), loss, data, num_steps=2, batch_size=16,
                           key=jax.random.key(2), optimizer=training.make_optimizer(2e-3),
                           progress=False)
    assert "jit(_train_step)" not in counter.names, counter.names


def test_log_density_loss_weight_zero_is_not_differentiated_and_weights_share_a_step():
    zero = training.LogDensityFPLoss.deveney(0.0, num_collocation=16)
    one = training.LogDensityFPLoss.deveney(1.0, num_collocation=16)
    assert not zero._fp_gradient and one._fp_gradient
    assert jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(
        training.LogDensityFPLoss.deveney(0.3, num_collocation=16))
    pot = nets.PotentialMLP(key=jax.random.key(9), width=8, depth=1, beta=10.0)
    x0 = targets.checker().sample(16, key=jax.random.key(3))
    grad = lambda loss: eqx.filter_grad(lambda m: loss(m, x0, jax.random.key(4))[0])(pot)  # noqa: E731
    dsm_only = eqx.filter_grad(lambda m: zero.dsm(m, x0, jax.random.split(jax.random.key(4))[0])[0])
    for g, h in zip(jax.tree_util.tree_leaves(grad(zero)), jax.tree_util.tree_leaves(dsm_only(pot))):
        np.testing.assert_array_equal(g, h)


def test_bad_loss_weights_raise_clear_errors():
    dsm = training.DSMLoss(VPSDE())
    with pytest.raises(ValueError, match="weight must be >= 0, got -1"):
        training.ScoreFPELoss(dsm, weight=-1.0)
    with pytest.raises(ValueError, match="scalar_weight must be >= 0"):
        training.ScoreFPELoss(dsm, scalar_weight=-0.5)
    with pytest.raises(ValueError, match="weight must be a scalar"):
        training.ScoreFPELoss(dsm, weight=jnp.ones(2))
    with pytest.raises(ValueError, match="power must be > 0"):
        training.ScoreFPELoss(dsm, power=0.0)
    with pytest.raises(ValueError, match="LogDensityFPLoss: weight must be >= 0"):
        training.LogDensityFPLoss.deveney(-0.1)
    with pytest.raises(ValueError, match="batch_size"):
        training.compile_step(dsm, training.make_optimizer(), toy_data(), 0, small_net())
