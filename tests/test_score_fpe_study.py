"""The score-FPE study helpers: lambda grids with checkpoint reuse, diagnostics at exact scores,
the official scalar term's bias, estimator checks."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odesde import fokker_planck as fp
from odesde import targets, training
from odesde.sde import VESDE, VPSDE
from odesde.studies import score_fpe as st
from odesde.utils.background import compile_ahead, wait_all

VP = VPSDE()


def test_four_gaussians_is_the_digest_prototype_mixture():
    mix = st.four_gaussians()
    assert mix.dim == 2 and mix.num_components == 4
    np.testing.assert_allclose(jnp.sort(jnp.linalg.norm(mix.means, axis=-1)), 2.0)
    np.testing.assert_allclose(mix.covs, jnp.broadcast_to(0.04 * jnp.eye(2), (4, 2, 2)))
    np.testing.assert_allclose(mix.mean(), 0.0, atol=1e-15)


def test_checkpoint_names_hash_every_training_parameter():
    cfg = st.TrainConfig(dim=2)
    mix = st.four_gaussians()
    name = st.checkpoint_name("finetune", cfg, seed=0, sde=VP, target=mix, lam=1e-4)
    assert name == st.checkpoint_name("finetune", cfg, seed=0, sde=VP, target=mix, lam=1e-4)
    assert name.startswith("score_fpe-finetune-d2-seed0-lam1e-04-") and name.endswith(".eqx")
    others = {st.checkpoint_name("finetune", cfg, seed=1, sde=VP, target=mix, lam=1e-4),
              st.checkpoint_name("finetune", cfg, seed=0, sde=VP, target=mix, lam=2e-4),
              st.checkpoint_name("base", cfg, seed=0, sde=VP, target=mix),
              st.checkpoint_name("finetune", cfg, seed=0, sde=VPSDE(beta_max=10.0), target=mix,
                                 lam=1e-4),
              st.checkpoint_name("finetune", cfg, seed=0, sde=VP, target=st.four_gaussians(std=0.3),
                                 lam=1e-4)}
    for field in dataclasses.fields(cfg):
        if field.name == "dim":
            continue
        value = getattr(cfg, field.name)
        new = {"fp_weighting": "sigma4", "divergence": "hutchinson"}.get(
            field.name, value * 2 if not isinstance(value, str) else value)
        others.add(st.checkpoint_name(
            "finetune", dataclasses.replace(cfg, **{field.name: new}), seed=0, sde=VP, target=mix,
            lam=1e-4))
    assert name not in others and len(others) == 5 + len(dataclasses.fields(cfg)) - 1


def test_lambda_loss_equals_the_core_loss_with_that_weight():
    cfg = st.TrainConfig(dim=2, width=16, depth=2)
    model = cfg.init_model(VP, jax.random.key(0))
    x0 = st.four_gaussians().sample(32, key=jax.random.key(1))
    ours, terms = cfg.fp_loss(VP, 3e-4)(model, x0, jax.random.key(2))
    core = training.ScoreFPELoss(cfg.dsm_loss(VP), weight=3e-4)
    total, core_terms = core(model, x0, jax.random.key(2))
    np.testing.assert_allclose(ours, total, rtol=1e-13)
    assert set(terms) == set(core_terms)


def test_lambda_grid_reuses_checkpoints_and_is_deterministic(tmp_path):
    cfg = st.TrainConfig(dim=2, width=16, depth=2, batch_size=16, dsm_steps=6, finetune_steps=4)
    mix = st.four_gaussians()
    kwargs = dict(lambdas=[0.0, 1e-3], seeds=[3], progress=False)
    base, tuned = st.train_lambda_grid(mix, VP, cfg, model_dir=tmp_path, **kwargs)
    assert not base[3].cached and len(base[3].losses) == 6
    assert len(list(tmp_path.glob("*.eqx"))) == 3
    again_base, again = st.train_lambda_grid(mix, VP, cfg, model_dir=tmp_path, **kwargs)
    assert again_base[3].cached and all(m.cached and m.seconds == 0 for m in again.values())
    fresh_base, fresh = st.train_lambda_grid(mix, VP, cfg, model_dir=None, **kwargs)
    for key in tuned:
        np.testing.assert_array_equal(tuned[key].losses, again[key].losses)
        np.testing.assert_array_equal(tuned[key].losses, fresh[key].losses)
    # Another seed draws other weights, data and noise: every curve differs.
    _, other = st.train_lambda_grid(mix, VP, cfg, model_dir=None, **{**kwargs, "seeds": [4]})
    for lam in kwargs["lambdas"]:
        assert not np.any(other[(4, lam)].losses == tuned[(3, lam)].losses)
    assert "fp" in tuned[(3, 1e-3)].terms and "fp" not in tuned[(3, 0.0)].terms
    with pytest.raises(ValueError, match="dimension"):
        st.train_lambda_grid(mix, VP, dataclasses.replace(cfg, dim=3), model_dir=None, **kwargs)


@pytest.mark.parametrize("sde", [VP, VESDE()], ids=["vp", "ve"])
def test_exact_score_residual_vanishes_and_scaled_score_does_not(sde):
    mix = st.four_gaussians()
    times = [0.01, 0.3]
    x = st.marginal_samples(mix, sde, times, 32, key=jax.random.key(0))
    assert x.shape == (2, 32, 2)
    assert st.residual_norms(mix.score_fn(sde), sde, x, times).max() < 1e-8
    scaled = st.ScaledScore(mix.score_fn(sde), jnp.asarray(1.05))
    assert st.residual_norms(scaled, sde, x, times).min() > 1e-4
    axis, grid = st.residual_on_grid(mix.score_fn(sde), sde, 0.1, half_width=3.0, n=5)
    assert axis.shape == (5,) and grid.shape == (5, 5) and grid.max() < 1e-8
    assert st.asymmetry(mix.score_fn(sde), x, times).max() < 1e-12


def test_scalar_term_at_the_true_vp_score_has_mean_minus_beta_d_over_2():
    mix = targets.random_mixture(3, 3, key=jax.random.key(4))
    times = [0.05, 0.3, 0.7]
    x = st.marginal_samples(mix, VP, times, 4000, key=jax.random.key(5))
    values = st.scalar_term_samples(mix.score_fn(VP), VP, x, times)
    mean, se = st.mean_and_se(values, axis=1)
    predicted = np.array([-VP.beta(t) * 3 / 2 for t in times])
    assert np.all(np.abs(mean - predicted) < 4 * se)
    x_ve = st.marginal_samples(mix, VESDE(), times, 4000, key=jax.random.key(6))
    ve_values = st.scalar_term_samples(mix.score_fn(VESDE()), VESDE(), x_ve, times)
    ve_mean, ve_se = st.mean_and_se(ve_values, axis=1)
    assert np.all(np.abs(ve_mean) < 4 * ve_se) and np.all(np.std(ve_values, axis=1) > 0)


def test_official_loss_along_scaling_isolates_the_scalar_term():
    factors = np.linspace(0.98, 1.02, 21)
    out = st.official_loss_along_scaling(st.four_gaussians(), VP, factors, n=512,
                                         key=jax.random.key(0))
    assert out["vector"][10] < 1e-16 and out["score_matching"][10] == 0
    assert np.all(np.delete(out["vector"], 10) > 0) and np.all(np.delete(out["score_matching"], 10) > 0)
    assert out["scalar"][10] > 1.0
    np.testing.assert_allclose(
        out["total"], out["score_matching"] + 0.15 * out["vector"] + 0.01 * out["scalar"],
        rtol=1e-14)
    without = out["score_matching"] + 0.15 * out["vector"]
    # The vector term is not exactly quadratic in c: the fitted vertex is 1 within 1e-5.
    assert np.argmin(without) == 10 and abs(st.parabola_minimum(factors, without) - 1) < 1e-5
    assert abs(st.parabola_minimum(factors, out["total"]) - 1) > 1e-4


def test_parabola_minimum():
    x = np.linspace(-1, 1, 11)
    assert st.parabola_minimum(x, (x - 0.13) ** 2) == pytest.approx(0.13)
    assert st.parabola_minimum(x, x) == -1.0


def test_hutchinson_within_standard_error_and_finite_difference_second_order():
    mix = st.four_gaussians()
    score = mix.score_fn(VP)
    x = mix.marginal(VP, 0.2).sample(8, key=jax.random.key(1))
    out = st.hutchinson_vs_exact(score, x, 0.2, key=jax.random.key(2), num_probes=2000)
    z = np.abs(out["estimate"] - out["exact"]) / out["se"]
    assert z.max() < 4.5 and np.all(out["se"] > 0)
    errors = st.finite_difference_errors(score, x, 0.2, scales=[1.0, 0.5])
    order = np.log2(errors[0] / errors[1])
    assert 1.7 < order < 2.3 and errors[0] < 1e-3


def test_hutchinson_check_tests_the_library_estimator():
    """The estimate is ``fokker_planck.divergence(method="hutchinson")`` itself, row by row with
    the documented keys; the exact trace and the closed-form se do not go through it."""
    mix = targets.random_mixture(3, 2, key=jax.random.key(3))
    score = mix.score_fn(VP)
    x = mix.marginal(VP, 0.3).sample(4, key=jax.random.key(4))
    key, n = jax.random.key(5), 300
    out = st.hutchinson_vs_exact(score, x, 0.3, key=key, num_probes=n)
    t = jnp.asarray(0.3)
    for xi, ki, est, exact, se in zip(x, jax.random.split(key, 4), out["estimate"], out["exact"],
                                      out["se"]):
        fn = lambda y: score(y, t)  # noqa: E731
        assert est == pytest.approx(float(fp.divergence(fn, xi, method="hutchinson", key=ki,
                                                        num_probes=n, probe="gaussian")), rel=1e-12)
        jac = jax.jacfwd(fn)(xi)
        assert exact == pytest.approx(float(jnp.trace(jac)), rel=1e-12)
        # The closed-form se agrees with the spread of single-probe library estimates.
        singles = jax.vmap(
            lambda k, fn=fn, xi=xi: fp.divergence(fn, xi, method="hutchinson", key=k)
        )(jax.random.split(ki, 4000))
        assert float(jnp.std(singles)) / math.sqrt(n) == pytest.approx(float(se), rel=0.1)


def test_hutchinson_check_detects_a_bias_of_the_library_estimator(monkeypatch):
    """A bias of a few standard errors injected into ``fokker_planck.divergence`` fails the
    chapter's criterion (max |z| <= 4): the check has power and reads the library's function."""
    mix = st.four_gaussians()
    x = mix.marginal(VP, 0.2).sample(8, key=jax.random.key(1))
    def run():
        return st.hutchinson_vs_exact(mix.score_fn(VP), x, 0.2, key=jax.random.key(2),
                                      num_probes=2000)

    clean = run()
    bias = 6 * float(np.max(clean["se"]))
    original = fp.divergence
    monkeypatch.setattr(fp, "divergence", lambda *a, **k: original(*a, **k) + bias)
    biased = run()
    np.testing.assert_allclose(biased["estimate"] - clean["estimate"], bias, rtol=1e-9)
    np.testing.assert_array_equal(biased["exact"], clean["exact"])
    assert np.max(np.abs(clean["estimate"] - clean["exact"]) / clean["se"]) <= 4
    assert np.min(np.abs(biased["estimate"] - biased["exact"]) / biased["se"]) > 4


def test_step_seconds_and_mean_and_se():
    cfg = st.TrainConfig(dim=2, width=8, depth=1)
    seconds = st.step_seconds(cfg.dsm_loss(VP), cfg.init_model(VP, jax.random.key(0)),
                              st.four_gaussians(), batch_size=8, repeats=3, key=jax.random.key(1))
    assert 0 < seconds < 10
    mean, se = st.mean_and_se([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(se, [1.0, 2.0])
    mean, se = st.mean_and_se([[1.0, 2.0]])
    np.testing.assert_allclose(se, 0.0)


def test_chunked_evaluation_and_likelihood(monkeypatch):
    monkeypatch.setattr(st, "CHUNK", 2)
    x = jnp.arange(10.0).reshape(5, 2)
    out = st._chunked(lambda a, b: (a.sum(-1), b[:, 0]), x, -x)
    np.testing.assert_array_equal(out[0], x.sum(-1))
    np.testing.assert_array_equal(out[1], -x[:, 0])
    # The probability-flow NLL of the exact score of a Gaussian is its exact NLL.
    gauss = targets.gaussian(jnp.zeros(2), jnp.array([[0.5, 0.1], [0.1, 0.3]]))
    pts = gauss.sample(3, key=jax.random.key(0))
    np.testing.assert_allclose(st.nll(gauss.score_fn(VP), VP, pts), -gauss.log_prob(pts),
                               atol=2e-3)


def test_fixed_shape_chunks_draw_and_log_prob(monkeypatch):
    monkeypatch.setattr(st, "CHUNK", 4)
    seen = []

    def fn(a, t):
        seen.append(a.shape[0])
        return a.sum(-1) * t

    x, t = np.arange(18.0).reshape(9, 2), np.linspace(0, 1, 9)
    np.testing.assert_allclose(st._chunked(fn, x, t), x.sum(-1) * t)
    assert seen == [4, 4, 4]  # every call sees one shape: one compilation
    seen.clear()
    np.testing.assert_allclose(st._chunked(fn, x[:3], t[:3], size=8, pad=False),
                               x[:3].sum(-1) * t[:3])
    assert seen == [3]
    with pytest.raises(ValueError, match="no points"):
        st._chunked(fn, x[:0], t[:0])
    mix = st.four_gaussians()
    monkeypatch.setattr(st, "SAMPLE_BLOCK", 8)
    a, b = st.draw(mix, 5, key=jax.random.key(1)), st.draw(mix, 20, key=jax.random.key(1))
    assert a.shape == (5, 2) and b.shape == (20, 2)
    np.testing.assert_array_equal(a, b[:5])  # blocks of a fixed size: n does not change them
    assert not np.array_equal(b[:8], b[8:16])
    np.testing.assert_allclose(st.log_prob(mix, b), mix.log_prob(jnp.asarray(b)), rtol=1e-12)
    with pytest.raises(ValueError, match="n must be a positive int"):
        st.draw(mix, 0, key=jax.random.key(1))


def test_background_compilation_serves_the_later_calls():
    # A dimension and width no other test uses, so that nothing is compiled already.
    mix = targets.random_mixture(5, 2, key=jax.random.key(7))
    cfg = st.TrainConfig(dim=5, width=9, depth=1, batch_size=16, dsm_steps=3, finetune_steps=2,
                         finetune_lr=1e-3)
    programs = st.chapter_programs({"5-D": mix}, {"5-D": cfg}, VP, lambdas=[0.0, 1e-3],
                                   n_nll=3, n_scaling=8, key=jax.random.key(0))
    labels = [label for label, _, _ in programs]
    assert "5-D: DSM + FP step" in labels and "5-D: DSM fine-tune step" not in labels
    with st.CompileCounter() as ahead:
        seconds = wait_all(compile_ahead(programs))
    assert set(seconds) == set(labels) and ahead.count >= len(labels)
    with st.CompileCounter() as later:
        _, tuned = st.train_lambda_grid(mix, VP, cfg, lambdas=[0.0, 1e-3], seeds=[0],
                                        model_dir=None, progress=False)
        model = tuned[(0, 1e-3)].model
        x = st.marginal_samples(mix, VP, [0.1, 0.5], 8, key=jax.random.key(1))
        st.residual_norms(model, VP, x, [0.1, 0.5])
        st.asymmetry(model, x, [0.1, 0.5])
        st.nll(model, VP, x[0, :3])
        st.nll(mix.score_fn(VP), VP, x[0, :3])
        st.scalar_term_samples(mix.score_fn(VP), VP, x, [0.1, 0.5])
        st.official_loss_along_scaling(mix, VP, [0.99, 1.0], n=8, key=jax.random.key(2))
        st.step_seconds(cfg.official_loss(VP), model, mix, batch_size=16, repeats=1,
                        key=jax.random.key(3), lr=1e-3)
    big = {"jit(_train_step)", "jit(_residuals)", "jit(_asymmetry)", "jit(_nll_block)",
           "jit(_scalar_terms)", "jit(_scaling_terms)", "jit(_perturb)", "jit(_init_model)"}
    assert not big & set(later.names), later.names
    failing = compile_ahead([("broken", st._residuals, (None,))])
    with pytest.raises(RuntimeError, match="broken"):
        wait_all(failing)
