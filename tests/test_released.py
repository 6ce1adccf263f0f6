"""The released Deveney et al. histograms: lookup, download, sha256, and their W2^2 tables."""

import shutil

import numpy as np
import pytest

from odesde import released
from odesde.utils.printed import matches_printed
from odesde.studies.ode_sde_gap.published import (
    CHECKER_0_GRID_4, DATASETS, GRID_FACTOR_PRINTED, ODE_SDE_W2, T4_RATIO_RANGE, WEIGHTS,
)


@pytest.fixture
def data_env(published_data, monkeypatch, tmp_path):
    monkeypatch.setenv("ODESDE_DATA", str(published_data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return published_data


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ODESDE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_every_released_file_loads_with_its_sha256(data_env):
    for d in DATASETS:
        assert released.load_released("truth", d, download=False).shape == (4096,)
        for kind in ("sde", "ode"):
            for w in WEIGHTS:
                h = released.load_released(kind, d, float(w), download=False)
                assert h.dtype == np.float64 and abs(h.sum() - 1) < 1e-12 and h.min() >= 0
    assert released.available()


def test_orientation_of_the_checkerboard_truth(data_env):
    W = released.load_released("truth", "checker", download=False).reshape(64, 64)  # W[i2, i1]
    a = np.linspace(-3.5, 3.5, 64)
    occupied = W[np.ix_((a > -3) & (a < -1.5), (a > -3) & (a < -1.5))]
    empty = W[np.ix_((a > -3) & (a < -1.5), (a > -1.5) & (a < 0))]  # x2 in [-3,-1.5], x1 in [-1.5,0]
    assert occupied.sum() > 0.1 and empty.sum() == 0.0


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="kind='density'"):
        released.filename("density", "checker", 0.0)
    with pytest.raises(ValueError, match="dataset='moons'"):
        released.filename("sde", "moons", 0.0)
    with pytest.raises(ValueError, match="weight=0.5"):
        released.filename("sde", "checker", 0.5)
    with pytest.raises(ValueError, match="takes no weight"):
        released.filename("truth", "checker", 1.0)
    with pytest.raises(ValueError, match="pair='ode-ode'"):
        released.w2_table(pairs=["ode-ode"])


def test_missing_and_offline_names_odesde_data_and_the_file(offline_env):
    name = released.filename("ode", "checker", 0.0)
    with pytest.raises(FileNotFoundError, match="ODESDE_DATA") as info:
        released.load_released("ode", "checker", 0.0, base_url=f"file://{offline_env}/nowhere/")
    assert name in str(info.value)
    with pytest.raises(FileNotFoundError, match="download=False"):
        released.load_released("ode", "checker", 0.0, download=False)


def test_download_is_verified_and_cached_atomically(published_data, offline_env):
    source = offline_env / "mirror"
    source.mkdir()
    name = released.filename("sde", "blob", 10.0)
    shutil.copy(published_data / "deveney" / name, source / name)
    h = released.load_released("sde", "blob", 10.0, base_url=f"file://{source}/")
    cached = offline_env / "cache" / "odesde" / "deveney" / name
    assert cached.is_file() and np.array_equal(np.load(cached), h)
    assert not list(cached.parent.glob("*.tmp"))
    (source / name).unlink()  # now served from the cache
    assert np.array_equal(released.load_released("sde", "blob", 10.0, download=False), h)
    # A corrupted download is refused and nothing is cached.
    bad = released.filename("ode", "blob", 10.0)
    with open(source / bad, "wb") as f:
        np.save(f, np.full(4096, 1 / 4096))
    with pytest.raises(ValueError, match="sha256"):
        released.load_released("ode", "blob", 10.0, base_url=f"file://{source}/")
    assert not (cached.parent / bad).exists() and not list(cached.parent.glob("*.tmp"))


def test_checkerboard_w_r_0_table_row(data_env):
    table = released.w2_table(datasets=["checker"], weights=["0.0"], download=False)
    gap = table[("ode-sde", "checker", "0.0")]["w2_squared"]
    assert matches_printed(gap, ODE_SDE_W2[("checker", "0.0")])
    ratio = table[("ode-truth", "checker", "0.0")]["w2_squared"] / table[("sde-truth", "checker", "0.0")]["w2_squared"]
    assert T4_RATIO_RANGE[0] <= ratio <= T4_RATIO_RANGE[1] + 0.5  # T4: "5-7x"


def test_grid_caveat_factor(data_env):
    table = released.w2_table(datasets=["checker"], weights=["0.0"], pairs=["ode-sde"],
                              half_width=4.0, download=False)
    value = table[("ode-sde", "checker", "0.0")]["w2_squared"]
    assert matches_printed(value, CHECKER_0_GRID_4)
    assert matches_printed((4 / 3.5) ** 2, GRID_FACTOR_PRINTED)


@pytest.mark.slow
def test_checkerboard_trends_t2_t3(data_env):
    # T3: SDE-truth worsens monotonically in w_R; T2: ODE-truth best at 0.1 or 1, worst at 10.
    table = released.w2_table(datasets=["checker"], pairs=["ode-truth", "sde-truth"], download=False)
    sde = [table[("sde-truth", "checker", w)]["w2_squared"] for w in WEIGHTS]
    ode = [table[("ode-truth", "checker", w)]["w2_squared"] for w in WEIGHTS]
    assert all(a < b for a, b in zip(sde, sde[1:]))
    assert int(np.argmin(ode)) in (1, 2) and ode[3] > ode[0]
