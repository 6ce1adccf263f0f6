"""Exact Gaussian errors of Pierret & Galerne: published tables, anchors, orders, proposition."""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from odesde import gaussian, spectra
from odesde.studies import gaussian_exact_errors as published
from odesde.utils.printed import matches_printed
from odesde.sde import VESDE, VPSDE

V4 = published.PIERRET_GALERNE_V4


def load(published_data, year):
    return np.load(published_data / f"cifar10_eigenvalues_{year}.npy")


@pytest.fixture(scope="module")
def pre_icml(request):
    from conftest import shared_data_dir

    lam = load(shared_data_dir(), 2024)
    schemes = V4.schemes + ("sde", "ode")
    values = gaussian.w2_table(lam, schemes=schemes, eps=V4.eps, n_points=V4.n_points,
                               starts=("pT", "normal"))
    return dict(zip(schemes, values))


def test_pre_icml_table_every_cell(pre_icml):
    assert len(V4.cells) == 16
    mismatched_format = []
    for (scheme, eps), cells in V4.cells.items():
        j = V4.eps.index(eps)
        continuous = pre_icml["sde" if scheme in ("em", "ei") else "ode"][j, 0]
        computed = [continuous] + list(pre_icml[scheme][j])
        for col, (cell, values) in enumerate(zip(cells, computed)):
            for start, text, x in zip(("pT", "N0"), cell, values):
                where = f"{scheme} eps={eps} column {col} {start}: computed {x!r}, printed {text}"
                # 0.005 for two-decimal cells, half a unit of the mantissa for E cells.
                assert matches_printed(float(x), text), where
                if gaussian.format_value(x) != text:
                    mismatched_format.append(where)
    assert not mismatched_format, mismatched_format


def test_float64_anchors(published_data):
    lam = load(published_data, 2024)
    anchors = dict(published.PIERRET_GALERNE_ANCHORS)
    for scheme in ("em", "ei", "euler", "heun", "sde", "ode"):
        x = gaussian.w2_to_data(lam, scheme, n_points=1000, eps=0.0, start="normal")
        assert isinstance(x, float)
        assert matches_printed(x, anchors[scheme]), (scheme, x)
    init = float(gaussian.w2(gaussian.initial_variance(lam, "normal"),
                             gaussian.initial_variance(lam, "pT")))
    assert matches_printed(init, anchors["initialisation"]), init


def test_2025_spectrum_infinite_heun_rk4_and_heun_conventions(published_data):
    lam = load(published_data, 2025)
    assert np.signbit(lam).sum() == 9  # the file's zeros are -0.0; the code normalises them
    nfe = (50, 250, 500, 1000)
    schemes = gaussian.SCHEMES
    points = gaussian.table_points(nfe, schemes)
    table = gaussian.w2_table(lam, schemes=schemes, eps=(0.0, 1e-5), n_points=points)
    for i, scheme in enumerate(schemes):
        at_zero = table[i, 0]
        if scheme in ("heun", "rk4"):
            assert np.all(np.isposinf(at_zero)), scheme
        else:
            assert np.all(np.isfinite(at_zero)), scheme
        assert np.all(np.isfinite(table[i, 1])), scheme
    assert gaussian.w2_to_data(lam, "rk4", n_points=250, eps=0.0, start="pT") == math.inf
    assert gaussian.format_value(table[4, 0, 0, 0]) == "-"
    # Corrected Heun at NFE = 2n is the as-published Heun at NFE = n: the same grid.
    published = gaussian.table_points((50, 250, 500), ("heun",), heun_points="as_published")
    corrected = gaussian.table_points((100, 500, 1000), ("heun",), heun_points="corrected")
    assert published == corrected == {"heun": (50, 250, 500)}
    a = gaussian.w2_table(lam, schemes=("heun",), eps=(1e-3,), n_points=published)
    b = gaussian.w2_table(lam, schemes=("heun",), eps=(1e-3,), n_points=corrected)
    np.testing.assert_array_equal(a, b)


def test_nfe_to_points():
    assert gaussian.nfe_to_points(1000, "em") == 1000
    assert gaussian.nfe_to_points(1000, "ddpm") == 1000
    assert gaussian.nfe_to_points(1000, "heun") == 500
    assert gaussian.nfe_to_points(1000, "heun", heun_points="as_published") == 1000
    assert [gaussian.nfe_to_points(n, "rk4") for n in (50, 250, 500, 1000)] == [12, 62, 125, 250]
    with pytest.raises(ValueError, match="heun_points"):
        gaussian.nfe_to_points(100, "heun", heun_points="fixed")
    with pytest.raises(ValueError, match="nfe=4"):
        gaussian.nfe_to_points(4, "rk4")


ORDERS = {"em": 1, "ei": 1, "ddpm": 1, "euler": 1, "heun": 2, "rk4": 4}


@pytest.mark.parametrize("scheme", gaussian.SCHEMES)
def test_convergence_order(scheme):
    # Digest Sec. 3: eps > 0, a fixed start, eigenvalues spanning 1e-4 .. 200.
    lam = np.array([1e-4, 1e-2, 0.5, 3.0, 200.0])
    flow = "sde" if scheme in gaussian.SDE_SCHEMES else "ode"
    exact = np.asarray(gaussian.final_variances(lam, flow, n_points=2, eps=1e-2, start="normal"))
    ns = np.array([200, 400, 800, 1600])
    errors = []
    for n in ns:
        v = np.asarray(gaussian.final_variances(lam, scheme, n_points=int(n), eps=1e-2,
                                                start="normal"))
        errors.append(np.max(np.abs(v - exact) / exact))
    slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
    last = np.log(errors[-1] / errors[-2]) / np.log(2)
    order = ORDERS[scheme]
    assert abs(slope + order) < 0.2, (scheme, slope, errors)
    assert abs(last + order) < 0.1, (scheme, last, errors)


def test_exact_at_unit_eigenvalue():
    # lambda_i(t) = 1 for all t: ODE schemes and DDPM are exact; EM and EI are not.
    for scheme in gaussian.SCHEMES:
        v = float(gaussian.final_variances(np.array([1.0]), scheme, n_points=50, eps=1e-3,
                                           start="normal")[0])
        if scheme in ("em", "ei"):
            assert v - 1.0 > 1e-2, (scheme, v)
        else:
            assert abs(v - 1.0) < 1e-12, (scheme, v)


def test_digest_recursion_formulas():
    """step_coefficients (generic f, g form) against the digest's table in beta notation."""
    lam = np.array([0.0, 1e-5, 0.3, 1.0, 7.0, 221.0])
    bmin, bmax = 0.05, 10.0
    beta = lambda t: bmin + (bmax - bmin) * t  # noqa: E731
    big_b = lambda t: bmin * t + 0.5 * (bmax - bmin) * t**2  # noqa: E731
    lt = lambda t: np.exp(-2 * big_b(t)) * lam + 1 - np.exp(-2 * big_b(t))  # noqa: E731
    g = lambda t: beta(t) * (1 - 1 / lt(t))  # noqa: E731
    t, dt = 0.37, 0.01
    tn = t - dt
    eta = big_b(t) - big_b(tn)
    bd = 2 * dt * beta(t)
    c1 = g(t)
    c2 = g(t - dt / 2) * (1 + dt / 2 * c1)
    c3 = g(t - dt / 2) * (1 + dt / 2 * c2)
    c4 = g(tn) * (1 + dt * c3)
    expected = {
        "em": (1 + dt * beta(t) * (1 - 2 / lt(t)), 2 * dt * beta(t)),
        "ei": (1 + np.expm1(eta) * (1 - 2 / lt(t)), np.expm1(2 * eta)),
        "ddpm": ((1 - bd / lt(t)) / np.sqrt(1 - bd), bd),
        "euler": (1 + dt * g(t), 0.0),
        "heun": (1 + dt / 2 * g(t) + dt / 2 * g(tn) * (1 + dt * g(t)), 0.0),
        "rk4": (1 + dt / 6 * (c1 + 2 * c2 + 2 * c3 + c4), 0.0),
    }
    for scheme, (a, b2) in expected.items():
        a2_got, b2_got = gaussian.step_coefficients(lam, scheme, t, tn, dt)
        np.testing.assert_allclose(a2_got, a**2, rtol=1e-12, err_msg=scheme)
        np.testing.assert_allclose(b2_got, np.broadcast_to(b2, lam.shape), rtol=1e-12,
                                   err_msg=scheme)


def test_song_convention_is_the_same_process():
    lam = np.array([1e-3, 0.2, 1.0, 40.0])
    song = VPSDE(beta_min=0.1, beta_max=20.0, convention="song")
    for scheme in ("ei", "ddpm", "rk4", "sde", "ode"):
        a = gaussian.final_variances(lam, scheme, n_points=100, eps=1e-3, start="normal")
        b = gaussian.final_variances(lam, scheme, n_points=100, eps=1e-3, start="normal",
                                     sde=song)
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=scheme)


def test_schemes_converge_to_continuous_solution():
    lam = np.array([1e-3, 0.2, 1.0, 40.0])
    for start in gaussian.STARTS:
        for scheme in gaussian.SCHEMES:
            flow = "sde" if scheme in gaussian.SDE_SCHEMES else "ode"
            exact = gaussian.final_variances(lam, flow, n_points=2, eps=1e-2, start=start)
            v = gaussian.final_variances(lam, scheme, n_points=4000, eps=1e-2, start=start)
            np.testing.assert_allclose(v, exact, rtol=2e-2, err_msg=f"{scheme} {start}")


def test_proposition_sde_never_worse_than_ode_on_cifar(published_data):
    lam = gaussian.as_spectrum(load(published_data, 2025))
    t = np.linspace(0.0, 1.0, 201)[:, None]  # every row a time, every column an eigenvalue
    s0 = gaussian.initial_variance(lam, "normal")
    r = np.asarray(gaussian.marginal_spectrum(lam, t))
    dev_sde = np.asarray(gaussian.exact_variance(lam, t, flow="sde", s0=s0)) - r
    dev_ode = np.asarray(gaussian.exact_variance(lam, t, flow="ode", s0=s0)) - r
    assert np.all(dev_sde * dev_ode >= 0)  # same sign
    assert np.all(np.abs(dev_sde) <= np.abs(dev_ode) + 1e-14)  # (equal at t = T)
    assert np.all(np.abs(dev_sde[:-1]) < np.abs(dev_ode[:-1]) + 1e-14)
    # The ratio of the deviations is e^{-2(B(T) - B(t))} lambda_i(t) / lambda_i(T); compared
    # without dividing, as the deviations are differences of O(r) numbers.
    big_b = lambda s: 0.05 * s + 0.5 * 9.95 * s**2  # noqa: E731
    ratio = np.exp(-2 * (big_b(1.0) - big_b(t))) * r / np.asarray(
        gaussian.marginal_spectrum(lam, 1.0))
    assert np.all(np.abs(dev_sde - ratio * dev_ode) <= 1e-12 * (1.0 + r))
    t_sde, w_sde = gaussian.w2_along_time(lam, "sde", n_points=201)
    t_ode, w_ode = gaussian.w2_along_time(lam, "ode", n_points=201)
    np.testing.assert_array_equal(t_sde, t_ode)
    assert np.all(w_sde <= w_ode * (1 + 1e-12))
    assert w_sde[-1] < w_ode[-1] / 50  # 6.7e-4 vs 0.073


@settings(max_examples=40, deadline=None)
@given(
    lam=st.lists(st.floats(0.0, 1e3, allow_nan=False), min_size=8, max_size=8),
    t=st.floats(0.0, 1.0),
    s0=st.floats(1e-3, 10.0),
)
def test_proposition_property(lam, t, s0):
    lam = gaussian.as_spectrum(lam)
    r = np.asarray(gaussian.marginal_spectrum(lam, t))
    v_sde = np.asarray(gaussian.exact_variance(lam, t, flow="sde", s0=s0))
    v_ode = np.asarray(gaussian.exact_variance(lam, t, flow="ode", s0=s0))
    e_sde = np.abs(np.sqrt(v_sde) - np.sqrt(r))
    e_ode = np.abs(np.sqrt(v_ode) - np.sqrt(r))
    assert np.all(e_sde <= e_ode * (1 + 1e-9) + 1e-12)
    assert float(gaussian.w2(v_sde, r)) <= float(gaussian.w2(v_ode, r)) * (1 + 1e-9) + 1e-12


def test_trajectories_figure_1a(published_data):
    lam = load(published_data, 2024)
    init = float(gaussian.w2(gaussian.initial_variance(lam, "normal"),
                             gaussian.initial_variance(lam, "pT")))
    curves = {}
    for scheme, n in (("em", 1000), ("sde", 1000), ("ode", 1000), ("heun", 500), ("ode", 500),
                      ("rk4", 250), ("ode", 250)):
        t, dist = gaussian.w2_along_time(lam, scheme, n_points=n, eps=0.0, start="normal")
        curves[scheme, n] = dist
        assert t.shape == dist.shape == (n,)
        assert t[0] == 1.0 and t[-1] == 0.0 and np.all(np.diff(t) < 0)
        assert dist[0] == pytest.approx(init, rel=1e-12)
        # At eps = 0 the last point is the table's W2 to p_0.
        end = gaussian.w2_to_data(lam, scheme, n_points=n, eps=0.0, start="normal")
        assert dist[-1] == pytest.approx(end, rel=1e-10)
    # "Heun/RK4 lie on the ODE curve" (NFE 1000: Heun 500 points, RK4 250), except for their
    # last, stiff steps into t = 0 (2024 spectrum: no zeros, so finite).
    heun, ode = curves["heun", 500], curves["ode", 500]
    np.testing.assert_allclose(heun[:-2], ode[:-2], rtol=1e-2)
    assert heun[-1] > 2 * ode[-1]
    rk4, ode = curves["rk4", 250], curves["ode", 250]
    np.testing.assert_allclose(rk4[:-1], ode[:-1], rtol=1e-5)
    assert rk4[-1] > 2 * ode[-1]
    em, sde, ode = curves["em", 1000], curves["sde", 1000], curves["ode", 1000]
    assert np.all(sde[1:] < ode[1:]) and sde[-1] < ode[-1] / 100  # the SDE dips far below
    assert np.all(em[1:] > sde[1:]) and em[-1] > 100 * sde[-1]


def test_eigenvalue_errors_figure_2(published_data):
    lam = gaussian.as_spectrum(load(published_data, 2025))
    for scheme in ("em", "ddpm", "rk4"):
        err = gaussian.eigenvalue_errors(lam, scheme, n_points=gaussian.nfe_to_points(
            1000, scheme), eps=1e-3, start="normal")
        assert err.shape == lam.shape
        w = gaussian.w2_to_data(lam, scheme, n_points=gaussian.nfe_to_points(1000, scheme),
                                eps=1e-3, start="normal")
        assert np.sqrt(np.sum(err**2)) == pytest.approx(w, rel=1e-10)
    # Unit eigenvalue: DDPM has no discretisation error there (only truncation).
    ddpm = gaussian.eigenvalue_errors(np.array([1.0]), "ddpm", n_points=1000, eps=0.0,
                                      start="normal")
    assert ddpm[0] < 1e-12


def test_table_layout_and_continuous_columns():
    lam = np.array([0.0, 0.01, 0.5, 2.0, 2.0, 30.0])
    eps = (0.0, 1e-3)
    table = gaussian.w2_table(lam, schemes=("ode", "em", "heun", "em"), eps=eps,
                              n_points=(30, 60), starts=("normal", "pT"))
    assert table.shape == (4, 2, 2, 2)
    np.testing.assert_array_equal(table[1], table[3])
    assert np.all(table[0, :, 0] == table[0, :, 1])  # continuous: the same in every column
    for i, scheme in enumerate(("ode", "em", "heun")):
        for j, e in enumerate(eps):
            for k, n in enumerate((30, 60)):
                for m, start in enumerate(("normal", "pT")):
                    x = gaussian.w2_to_data(lam, scheme, n_points=n, eps=e, start=start)
                    assert table[i, j, k, m] == pytest.approx(x, rel=1e-12) or (
                        math.isinf(x) and math.isinf(table[i, j, k, m]))
    # Repeated eigenvalues are computed once but counted with their multiplicity.
    v = gaussian.final_variances(lam, "em", n_points=60, eps=1e-3, start="normal")
    assert float(gaussian.w2(v, lam)) == pytest.approx(table[1, 1, 1, 0], rel=1e-12)
    assert table[2, 0, 0, 0] == math.inf  # zero eigenvalue, Heun, eps = 0


def test_single_cells_compile_once_per_scheme_group_and_match_the_table():
    from odesde.studies.score_fpe import CompileCounter

    # A spectrum size no other test uses (700 distinct values pad to 1024): nothing compiled yet.
    lam = np.concatenate([np.geomspace(1e-4, 50.0, 699), [0.0]])
    points, eps = (30, 300, 1500), (0.0, 1e-3)
    with CompileCounter() as counter:
        cells = np.array([[[gaussian.w2_to_data(lam, s, n_points=n, eps=e, start="pT")
                            for n in points] for e in eps] for s in gaussian.SCHEMES])
    assert counter.names.count("jit(_w2_cell)") == len(set(gaussian.tables.CELL_GROUPS.values()))
    table = gaussian.w2_table(lam, schemes=gaussian.SCHEMES, eps=eps, n_points=points,
                              starts=("pT",))[..., 0]
    finite = np.isfinite(table)
    np.testing.assert_array_equal(np.isinf(cells), ~finite)  # Heun and RK4 at eps = 0
    np.testing.assert_allclose(cells[finite], table[finite], rtol=1e-12)


def test_format_value():
    assert gaussian.format_value(0.0) == "0"
    assert gaussian.format_value(math.inf) == "-"
    assert gaussian.format_value(6.679e-4) == "6.7E-4"
    assert gaussian.format_value(2.54e-3) == "2.5E-3"
    assert gaussian.format_value(0.07296) == "0.07"
    assert gaussian.format_value(0.155139) == "0.16"
    assert gaussian.format_value(4.77) == "4.77"
    assert gaussian.format_value(5754.8) == "5.8E+3"
    assert gaussian.format_value(100.0) == "100.00"


def test_bad_input_errors():
    lam = np.array([0.5, 1.0])
    with pytest.raises(ValueError, match="scheme='rk5'"):
        gaussian.w2_to_data(lam, "rk5", n_points=10, eps=0.0, start="pT")
    with pytest.raises(ValueError, match="start='prior'"):
        gaussian.w2_to_data(lam, "em", n_points=10, eps=0.0, start="prior")
    with pytest.raises(ValueError, match="eps=1.5"):
        gaussian.w2_to_data(lam, "em", n_points=10, eps=1.5, start="pT")
    with pytest.raises(ValueError, match="n_points=1"):
        gaussian.w2_to_data(lam, "em", n_points=1, eps=0.0, start="pT")
    with pytest.raises(ValueError, match="n_points=10.0"):
        gaussian.w2_to_data(lam, "em", n_points=10.0, eps=0.0, start="pT")
    with pytest.raises(ValueError, match=">= 0"):
        gaussian.w2_to_data(np.array([-1.0, 1.0]), "em", n_points=10, eps=0.0, start="pT")
    with pytest.raises(ValueError, match="1-D"):
        gaussian.w2_to_data(np.eye(2), "em", n_points=10, eps=0.0, start="pT")
    # DDPM needs beta^D = 2 beta dt < 1: N - 1 > 20 (T - eps).
    with pytest.raises(ValueError, match="ddpm.*n_points=21"):
        gaussian.w2_to_data(lam, "ddpm", n_points=21, eps=0.0, start="pT")
    assert math.isfinite(gaussian.w2_to_data(lam, "ddpm", n_points=22, eps=0.0, start="pT"))
    with pytest.raises(ValueError, match="f\\(t\\) < 0"):
        gaussian.final_variances(lam, "ei", n_points=10, eps=0.0, start="normal", sde=VESDE())
    with pytest.raises(ValueError, match="number of columns"):
        gaussian.w2_table(lam, schemes=("em", "heun"), eps=(0.0,),
                          n_points={"em": (10, 20), "heun": (10,)})
    with pytest.raises(ValueError, match="at least one"):
        gaussian.w2_table(lam, schemes=("em",), eps=(), n_points=(10,))


def test_heun_conventions_share_the_grid_at_twice_the_nfe():
    """Corrected Heun at NFE = 2n is as-published Heun at NFE = n; at the same NFE they differ."""
    lam = np.array([1e-3, 0.05, 0.7, 1.0, 12.0, 150.0])
    as_published = gaussian.table_points((50, 250, 500), ("heun",), heun_points="as_published")
    corrected = gaussian.table_points((100, 500, 1000), ("heun",), heun_points="corrected")
    assert as_published == corrected == {"heun": (50, 250, 500)}
    eps = (1e-4, 1e-3)
    a = gaussian.w2_table(lam, schemes=("heun",), eps=eps, n_points=as_published)
    b = gaussian.w2_table(lam, schemes=("heun",), eps=eps, n_points=corrected)
    np.testing.assert_array_equal(a, b)
    # The same NFE column: the as-published row spends twice the score evaluations.
    same_nfe = gaussian.w2_table(lam, schemes=("heun",), eps=eps, n_points=gaussian.table_points(
        (100, 500, 1000), ("heun",), heun_points="as_published"))
    assert np.all(np.abs(same_nfe - b) > 1e-8 * b)


@pytest.mark.parametrize("name", gaussian.SCHEMES + ("sde", "ode"))
def test_every_trajectory_starts_at_the_initialisation_error(name):
    """Figure 1a: at t = T every curve is W2(N(0, I), p_T), computed here from the digest's
    formulas (B(1) = 5.025) rather than by odesde."""
    lam = np.concatenate([spectra.power_law(40, exponent=1.5, largest=221.45, n_zeros=3), [1.0]])
    big_b = 0.05 + 0.5 * (10.0 - 0.05)
    lam_T = np.exp(-2 * big_b) * lam + 1 - np.exp(-2 * big_b)
    init = np.sqrt(np.sum((1.0 - np.sqrt(lam_T)) ** 2))
    n = gaussian.nfe_to_points(200, name) if name in gaussian.SCHEMES else 200
    t, dist = gaussian.w2_along_time(lam, name, n_points=n, eps=1e-3, start="normal")
    assert t[0] == 1.0 and dist[0] == pytest.approx(init, rel=1e-12)
    assert init > 1e-3  # the start is not trivially zero
    _, from_pt = gaussian.w2_along_time(lam, name, n_points=n, eps=1e-3, start="pT")
    assert from_pt[0] == pytest.approx(0.0, abs=1e-12)


def test_eigenvalue_formula_is_the_bures_distance_of_co_diagonal_gaussians():
    """W2 by the eigenvalue formula against POT and a NumPy nuclear-norm route, which see the
    rotated covariance matrices only, on a well-conditioned pair."""
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(5)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = rng.uniform(0.05, 20.0, d)
    v = lam * rng.uniform(0.5, 1.5, d)
    a, b = q @ np.diag(v) @ q.T, q @ np.diag(lam) @ q.T

    def sqrtm(m):
        w, vec = np.linalg.eigh(m)
        return (vec * np.sqrt(w)) @ vec.T

    expected = float(gaussian.w2(v, lam))
    nuclear = np.trace(a) + np.trace(b) - 2 * np.sum(np.linalg.svd(sqrtm(a) @ sqrtm(b),
                                                                  compute_uv=False))
    assert nuclear == pytest.approx(expected**2, rel=1e-10)
    pot = float(ot.gaussian.bures_wasserstein_distance(np.zeros(d), np.zeros(d), a, b))
    assert pot == pytest.approx(expected, rel=1e-9)
