"""Spectra: published files, the CIFAR-10 pipeline on a fake archive, ADSN, caching."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from odesde import gaussian, spectra


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No ODESDE_DATA, an empty user cache, and a CIFAR-10 URL that cannot be reached."""
    monkeypatch.delenv("ODESDE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(spectra, "CIFAR10_URL", (tmp_path / "unreachable.tar.gz").as_uri())
    return tmp_path


def fake_cifar10(path, n_per_batch=30, seed=0):
    """A CIFAR-10 python archive in the real layout, with random uint8 images."""
    rng = np.random.default_rng(seed)
    images = []

    def batch_bytes(label, n):
        # Channel-dependent brightness so the mean removal matters.
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, :1024] //= 2
        images.append(data)
        batch = {b"batch_label": label.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": data, b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        return pickle.dumps(batch, protocol=2)

    members = {f"cifar-10-batches-py/data_batch_{i}": batch_bytes(f"training batch {i} of 5",
                                                                  n_per_batch)
               for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = batch_bytes("testing batch 1 of 1", 7)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": n_per_batch}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return np.concatenate(images[:5])


def test_cifar10_pipeline_on_fake_archive(isolated, monkeypatch):
    archive = isolated / "cifar-10-python.tar.gz"
    train = fake_cifar10(archive)
    monkeypatch.setattr(spectra, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(spectra, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())

    lam = spectra.load("cifar10")

    # Reference in float64 through the Gram matrix: the n - 1 non-zero eigenvalues of the
    # covariance of x / 127.5 - 1 (divisor n - 1) are those of Xc Xc^T / (n - 1).
    n = train.shape[0]
    x = train.astype(np.float64) / 127.5 - 1.0
    xc = x - x.mean(axis=0)
    gram = np.linalg.eigvalsh(xc @ xc.T / (n - 1))[1:]  # one exact zero (centring)
    assert lam.dtype == np.float64 and lam.shape == (3072,)
    assert np.all(np.diff(lam) >= 0) and np.all(lam >= 0) and not np.any(np.signbit(lam))
    np.testing.assert_allclose(lam[-(n - 1):], gram, rtol=0, atol=2e-5 * gram.max())
    assert np.all(lam[: -(n - 1)] <= 2e-5 * gram.max())  # float32 noise around the zeros
    assert lam.sum() == pytest.approx(np.sum(xc**2) / (n - 1), rel=1e-5)

    cache = isolated / "cache" / "odesde"
    assert (cache / "cifar10_eigenvalues_computed.npy").is_file()
    assert (cache / "cifar-10-python.tar.gz").is_file()
    assert not list(cache.glob("*.tmp"))
    raw = np.load(cache / "cifar10_eigenvalues_computed.npy")
    assert raw.dtype == np.float32  # as the published files; negatives clipped to -0.0
    assert np.any(np.signbit(raw) & (raw == 0))

    # Cached: no download any more; a missing published file falls back with a warning.
    archive.unlink()
    np.testing.assert_array_equal(spectra.load("cifar10"), lam)
    with pytest.warns(UserWarning, match="cifar10_eigenvalues_2024.npy not found"):
        np.testing.assert_array_equal(spectra.load("cifar10-2024"), lam)


def test_covariance_spectrum_matches_numpy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(200, 12), dtype=np.uint8)
    lam = spectra.covariance_spectrum(images, batch=64)
    x = images.astype(np.float64) / 127.5 - 1.0
    expected = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert lam.dtype == np.float32
    np.testing.assert_allclose(lam, expected, rtol=1e-5)


def test_missing_spectrum_names_odesde_data_and_file(isolated):
    with pytest.raises(FileNotFoundError) as err:
        spectra.load("cifar10-2024")
    assert "ODESDE_DATA" in str(err.value) and "cifar10_eigenvalues_2024.npy" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        spectra.load("adsn-fabric")
    message = str(err.value)
    assert "ODESDE_DATA" in message and "adsn_fabric_eigenvalues.npy" in message
    assert "fabric.png" in message
    assert not list((isolated / "cache").rglob("*.tmp"))
    with pytest.raises(ValueError, match="name='cifar100'"):
        spectra.load("cifar100")


def test_download_md5_mismatch_leaves_nothing(isolated, monkeypatch):
    archive = isolated / "fake.tar.gz"
    fake_cifar10(archive, n_per_batch=2)
    monkeypatch.setattr(spectra, "CIFAR10_URL", archive.as_uri())
    with pytest.raises(ValueError, match="md5"):
        spectra.download_cifar10()
    assert not any(p.is_file() for p in (isolated / "cache").rglob("*"))


def test_atomic_save(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "spectrum.npy"
    spectra.atomic_save(target, np.arange(3.0))
    np.testing.assert_array_equal(np.load(target), np.arange(3.0))

    def broken_save(f, array):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        spectra.atomic_save(target, np.arange(5.0))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.arange(3.0))  # old file intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["spectrum.npy"]


def test_published_spectra(published_data, monkeypatch):
    monkeypatch.setenv("ODESDE_DATA", str(published_data))
    lam24 = spectra.load("cifar10-2024")
    assert lam24.dtype == np.float64 and lam24.shape == (3072,)
    assert lam24.min() == pytest.approx(6.34e-6, rel=1e-3)
    assert lam24.sum() == pytest.approx(761.6195, abs=1e-3)
    assert lam24.max() == pytest.approx(221.4533, abs=1e-4)
    lam25 = spectra.load("cifar10-2025")
    assert np.sum(lam25 == 0) == 9 and not np.any(np.signbit(lam25))
    assert np.max(np.abs(np.sort(lam24) - np.sort(lam25))) < 7.7e-6 + 1e-9
    assert np.sum(lam24 > 1) == np.sum(lam25 > 1) == 66
    adsn = spectra.load("adsn-fabric")
    assert adsn.shape == (196608,) and np.sum(adsn == 0) == 131072


def test_sha256_mismatch(tmp_path, monkeypatch):
    np.save(tmp_path / "cifar10_eigenvalues_2024.npy", np.ones(3072, dtype=np.float32))
    monkeypatch.setenv("ODESDE_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="sha256"):
        spectra.load("cifar10-2024")


def test_adsn_spectrum_reproduces_published(published_data, monkeypatch):
    monkeypatch.setenv("ODESDE_DATA", str(published_data))
    image = spectra.load_fabric()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    lam = spectra.adsn_spectrum(image)
    published = spectra.load("adsn-fabric")
    assert lam.shape == published.shape == (196608,)
    assert np.all(lam[:65536] > 0) or np.sum(lam[:65536] == 0) <= 1  # DC may round to 0
    assert np.all(lam[65536:] == 0)
    a, b = np.sort(lam), np.sort(published)
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
    assert lam.sum() == pytest.approx(1805.14, abs=0.005)
    # Same (fftshift) order as the published file, away from DC (float32 cancellation).
    close = np.abs(lam[:65536] - published[:65536]) <= 1e-4 * published[:65536]
    assert close.mean() > 0.999
    for scheme in ("em", "heun"):
        ours = gaussian.w2_to_data(lam, scheme, n_points=1000, eps=1e-3, start="normal")
        theirs = gaussian.w2_to_data(published, scheme, n_points=1000, eps=1e-3, start="normal")
        assert ours == pytest.approx(theirs, rel=5e-4), scheme  # 3 significant digits
    # Without the periodic component the trace would be 1764.89 (digest Sec. 4).
    u = image.astype(np.float64) / 255.0
    assert np.sum((u - u.mean(axis=(0, 1))) ** 2) == pytest.approx(1764.89, abs=0.005)


def test_periodic_component_solves_moisan_equation():
    rng = np.random.default_rng(2)
    u = rng.standard_normal((2, 6, 8)) + np.linspace(0, 3, 8)  # a ramp: not periodic
    p = np.real(np.fft.ifft2(spectra.periodic_component_fft(u)))
    periodic_laplacian = 4 * p - sum(np.roll(p, s, axis=a) for s in (1, -1) for a in (1, 2))
    interior = np.zeros_like(u)
    for axis in (1, 2):
        for shift in (1, -1):
            neighbour = np.roll(u, shift, axis=axis)
            inside = np.ones(u.shape[1:], dtype=bool)
            edge = 0 if shift == 1 else -1
            if axis == 1:
                inside[edge, :] = False
            else:
                inside[:, edge] = False
            interior += np.where(inside, u - neighbour, 0.0)
    np.testing.assert_allclose(periodic_laplacian, interior, atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=(1, 2)), u.sum(axis=(1, 2)), atol=1e-12)
    assert not np.allclose(p, u)


def test_adsn_spectrum_structure():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    lam = spectra.adsn_spectrum(image)
    assert lam.shape == (3 * 256,) and np.all(lam[256:] == 0)
    u = np.moveaxis(image / 255.0, -1, 0)
    t = (u - u.mean(axis=(1, 2), keepdims=True)) / 16
    p = np.real(np.fft.ifft2(spectra.periodic_component_fft(t)))
    assert lam.sum() == pytest.approx(256 * np.sum(p**2), rel=1e-12)  # Parseval
    with pytest.raises(ValueError, match="uint8 of shape"):
        spectra.adsn_spectrum(image.astype(np.float32))


def test_power_law():
    lam = spectra.power_law(100, exponent=1.5, largest=200.0, n_zeros=10)
    assert lam.dtype == np.float64 and lam.shape == (100,)
    assert lam[0] == 200.0 and np.all(np.diff(lam[:90]) < 0) and np.all(lam[90:] == 0)
    assert lam[1] == pytest.approx(200.0 * 2**-1.5)
    np.testing.assert_array_equal(lam, spectra.power_law(100, exponent=1.5, largest=200.0,
                                                         n_zeros=10))
    with pytest.raises(ValueError, match="exponent"):
        spectra.power_law(10, exponent=0.0)
    with pytest.raises(ValueError, match="n_zeros"):
        spectra.power_law(10, exponent=1.0, n_zeros=10)
    with pytest.raises(ValueError, match="d=0"):
        spectra.power_law(0, exponent=1.0)


def test_synthetic_texture_is_deterministic_and_gives_an_adsn_spectrum():
    image = spectra.synthetic_texture(32, seed=3)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, spectra.synthetic_texture(32, seed=3))
    assert not np.array_equal(image, spectra.synthetic_texture(32, seed=4))
    lam = spectra.adsn_spectrum(image)
    assert lam.size == 3 * 32 * 32 and np.sum(lam == 0) >= 2 * 32 * 32
    # Parseval: the trace is the energy of the periodic component of the centred image.
    u = np.moveaxis(image / 255.0, -1, 0)
    periodic = np.real(np.fft.ifft2(spectra.periodic_component_fft(u - u.mean(axis=(1, 2), keepdims=True))))
    assert np.sum(lam) == pytest.approx(np.sum(periodic**2), rel=1e-12)
    with pytest.raises(ValueError, match="size=4 must be an integer >= 8"):
        spectra.synthetic_texture(4)


def test_published_file_is_required_in_the_paper_profile(isolated, monkeypatch):
    from odesde.studies.gaussian_exact_errors import published_file

    monkeypatch.setenv("ODESDE_DATA", str(isolated / "data"))
    with pytest.raises(FileNotFoundError) as err:
        published_file("cifar10-2024", profile="paper")
    message = str(err.value)
    assert "cifar10_eigenvalues_2024.npy" in message and "ODESDE_DATA" in message
    assert str(isolated / "data") in message  # where it looked
    assert published_file("cifar10-2024", profile="smoke") is None
    assert published_file("adsn-fabric", profile="quick") is None
    (isolated / "data").mkdir()
    np.save(isolated / "data" / "cifar10_eigenvalues_2024.npy", np.ones(3, dtype=np.float32))
    expected = isolated / "data" / "cifar10_eigenvalues_2024.npy"
    assert published_file("cifar10-2024", profile="paper") == expected
    with pytest.raises(ValueError, match="name='cifar10'"):
        published_file("cifar10", profile="paper")


def _periodic_component_dense(u):
    """Moisan's periodic component by a dense linear solve, without FFTs: the p with the
    periodic Laplacian of p equal to the interior Laplacian of u, and the same mean as u."""
    m, n = u.shape
    index = np.arange(m * n).reshape(m, n)
    periodic = np.zeros((m * n, m * n))
    interior = np.zeros(m * n)
    for i in range(m):
        for j in range(n):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                periodic[index[i, j], index[i, j]] += 1.0
                periodic[index[i, j], index[(i + di) % m, (j + dj) % n]] -= 1.0
                if 0 <= i + di < m and 0 <= j + dj < n:
                    interior[index[i, j]] += u[i, j] - u[i + di, j + dj]
    p = np.linalg.lstsq(periodic, interior, rcond=None)[0]  # minimal norm: mean zero
    return (p - p.mean() + u.mean()).reshape(m, n)


def test_adsn_covariance_in_pixel_space_has_the_computed_eigenvalues():
    """The ADSN Gaussian X_c = p_c * W (one white noise W for the three channels), its
    3MN x 3MN covariance built in pixel space, has the eigenvalues adsn_spectrum computes in
    Fourier: one per frequency, two zeros (rank-one 3x3 blocks), the trace the energy of the
    periodic component."""
    rng = np.random.default_rng(7)
    side = 6
    image = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    u = np.moveaxis(image / 255.0, -1, 0)
    t = (u - u.mean(axis=(1, 2), keepdims=True)) / side
    p = np.stack([_periodic_component_dense(channel) for channel in t])
    # P[(c, x), z] = p_c(x - z) (circular): Cov X = P P^T.
    rows = []
    for c in range(3):
        for x0 in range(side):
            for x1 in range(side):
                rows.append([p[c, (x0 - z0) % side, (x1 - z1) % side]
                             for z0 in range(side) for z1 in range(side)])
    big_p = np.array(rows)
    covariance = big_p @ big_p.T
    lam = spectra.adsn_spectrum(image)
    expected = np.linalg.eigvalsh(covariance)
    np.testing.assert_allclose(np.sort(lam), expected, rtol=0, atol=1e-12 * expected.max())
    assert np.sum(lam == 0) == 2 * side**2 and np.all(lam[: side**2] > 0)
    assert lam.sum() == pytest.approx(side**2 * np.sum(p**2), rel=1e-12)
    # The periodic component matters: the centred image alone has another energy.
    assert abs(side**2 * np.sum(t**2) - lam.sum()) > 1e-3 * lam.sum()
