"""The retrained Deveney et al. study: batched training, checkpoints, samplers, metrics."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odesde import metrics, nets, training
from odesde.studies.ode_sde_gap import retrained as st

TINY = st.StudyConfig(beta=10.0, width=8, depth=2, batch_size=32, num_collocation=16,
                      num_steps=6)


def test_config_defaults_are_the_papers_and_deviations_are_listed():
    paper = st.StudyConfig.faithful()
    assert (paper.beta, paper.width, paper.depth, paper.batch_size, paper.num_collocation,
            paper.num_steps, paper.lr, paper.precision) == (
        100.0, 80, 3, 200_000, 50_000, 100_000, 1e-3, "float32")
    assert paper.deviations() == []
    lines = TINY.deviations()
    assert any(line.startswith("D1: beta = 10") for line in lines)
    assert any(line.startswith("D3: num_steps = 6") for line in lines)
    assert sum(line.startswith("D2") for line in lines) == 2
    with pytest.raises(ValueError, match="batch_size=0"):
        st.StudyConfig(batch_size=0)
    with pytest.raises(ValueError, match="precision='half'"):
        st.StudyConfig(precision="half")
    with pytest.raises(ValueError, match="dataset='moons'"):
        st.make_target("moons")


def test_float32_potential_matches_the_network():
    model = nets.PotentialMLP(key=jax.random.key(0), beta=10.0)
    wrapped = st.Float32Potential(model)
    x, t = jnp.array([0.3, -1.2]), jnp.asarray(0.7)
    assert wrapped.potential(x, t).dtype == jnp.float64
    np.testing.assert_allclose(wrapped.potential(x, t), model.potential(x, t), rtol=1e-5)
    np.testing.assert_allclose(wrapped(x, t), model(x, t), rtol=1e-4, atol=1e-6)
    # Gradients reach the float64 parameters.
    grads = eqx.filter_grad(lambda m: st.Float32Potential(m).potential(x, t))(model)
    leaf = grads.layers[0].weight
    assert leaf.dtype == jnp.float64 and float(jnp.abs(leaf).sum()) > 0


def test_weighted_loss_equals_the_core_loss():
    """Same draws and terms as odesde.training.LogDensityFPLoss, for w_R as an array."""
    model = nets.PotentialMLP(key=jax.random.key(1), beta=10.0, width=16)
    x0 = st.make_target("checker").sample(64, key=jax.random.key(2))
    key = jax.random.key(3)
    for w in (0.0, 2.5):
        core = training.LogDensityFPLoss.deveney(w, num_collocation=32)
        ours = st.WeightedDeveneyLoss(core, jnp.asarray(w))
        (a, ta), (b, tb) = core(model, x0, key), ours(model, x0, key)
        np.testing.assert_allclose(b, a, rtol=1e-12)
        np.testing.assert_allclose(tb["fp"], ta["fp"], rtol=1e-12)
        np.testing.assert_allclose(tb["dsm"], ta["dsm"], rtol=1e-12)


def test_batched_training_equals_separate_runs(tmp_path):
    """Two weights trained together = each trained alone (same init keys and draws); a
    checkpoint is reused; a half-way checkpoint resumes to the same histories."""
    cfg = dataclasses.replace(TINY, precision="float64")
    both = st.train_study(cfg, datasets=("checker",), weights=(0.0, 1.0), seed=4,
                          model_dir=tmp_path, chunk=3, progress=False)
    assert both.history["dsm"].shape == (1, 2, 6) and not both.cached and both.path.exists()
    np.testing.assert_allclose(both.history["loss"][0, 0], both.history["dsm"][0, 0])
    np.testing.assert_allclose(both.history["loss"][0, 1],
                               both.history["dsm"][0, 1] + both.history["fp"][0, 1])
    # Same first step for both weights (common random numbers, own initialisations: differ).
    assert both.history["dsm"][0, 0, 0] != both.history["dsm"][0, 1, 0]
    again = st.train_study(cfg, datasets=("checker",), weights=(0.0, 1.0), seed=4,
                           model_dir=tmp_path, chunk=3, progress=False)
    assert again.cached and again.seconds == 0.0
    np.testing.assert_array_equal(again.history["fp"], both.history["fp"])
    leaves = lambda m: jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))  # noqa: E731
    for a, b in zip(leaves(again.models), leaves(both.models)):
        np.testing.assert_array_equal(a, b)
    # Checkpoints every 3 steps (the chunk) give the same histories.
    other = tmp_path / "resume"
    half = st.train_study(cfg, datasets=("checker",),
                          weights=(0.0, 1.0), seed=4, model_dir=other, chunk=3,
                          checkpoint_every=3, progress=False)
    np.testing.assert_allclose(half.history["loss"], both.history["loss"], rtol=1e-12)
    # Without checkpoints: the same run.
    fresh = st.train_study(cfg, datasets=("checker",), weights=(0.0, 1.0), seed=4,
                           model_dir=None, chunk=3, progress=False)
    np.testing.assert_allclose(fresh.history["loss"], both.history["loss"], rtol=1e-10)
    assert fresh.path is None


def test_training_validation_and_nan_guard(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        st.train_study(TINY, datasets=("checker",), weights=(-1.0,), seed=0, model_dir=None)
    with pytest.raises(ValueError, match="dataset='moon'"):
        st.train_study(TINY, datasets=("moon",), weights=(0.0,), seed=0, model_dir=None)
    with pytest.raises(training.NonFiniteLossError, match=r"loss \(checker, w_R=1e\+308\)"):
        st.train_study(TINY, datasets=("checker",), weights=(1e308,), seed=0, model_dir=None,
                       chunk=3, progress=False)


def test_sample_pair_and_the_evaluation():
    """The paper's samplers on a tiny untrained model: shapes, common start, finite output;
    the metrics are well defined and the W2 of identical histograms is 0."""
    model = st.model_at(st.init_models(TINY, (1,), key=jax.random.key(5)), 0)
    net = st.network(model, "float32")
    times = np.array([10.0, 5.0, 1.0, 0.1, 0.0])
    xs, xo = st.sample_pair(net, n=300, key=jax.random.key(6), batch=128, times=times)
    assert xs.shape == xo.shape == (300, 2) and np.all(np.isfinite(xs)) and np.all(np.isfinite(xo))
    truth = st.truth_histogram("checker", 5000, key=jax.random.key(7))
    assert truth.shape == (4096,) and abs(truth.sum() - 1) < 1e-12
    assert metrics.grid_w2_squared(truth, truth) == pytest.approx(0.0, abs=1e-12)
    r2, gauge_free = st.residual_metrics(net, key=jax.random.key(8), n_times=8, n_points=32)
    assert r2 >= gauge_free >= 0
    a = st.dsm_value(net, "checker", key=jax.random.key(9), n=500)
    b = st.dsm_value(net, "checker", key=jax.random.key(9), n=500)
    assert a == b and a > 0  # common random numbers: the same key gives the same value
    np.testing.assert_allclose(st.normalised([1.0, 3.0, 2.0]), [-0.5, 0.5, 0.0])
    np.testing.assert_allclose(st.normalised([2.0, 2.0]), [0.0, 0.0])


def test_residual_vanishes_on_exact_log_densities():
    for name in ("blob", "checker"):
        r, scale = st.exact_residual(name, key=jax.random.key(10), n=64)
        assert r < 1e-7 * scale and scale > 1e-2, (name, r, scale)
    with pytest.raises(ValueError, match="closed-form"):
        st.exact_residual("circles2", key=jax.random.key(0))
