"""Eigenvalue spectra of the Gaussian data models of Pierret & Galerne.

Only eigenvalues are needed for the exact ``W2`` errors (:mod:`odesde.gaussian`):

- CIFAR-10 Gaussian (``d = 3072``): the published spectra ``"cifar10-2024"`` (pre-ICML
  tables) and ``"cifar10-2025"`` (ICML), or ``"cifar10"``, recomputed here from the dataset
  (digest Sec. 4: ``[-1, 1]`` scaling, channel-first flattening, unbiased float32 covariance,
  ``eigh``, negatives clipped);
- ADSN texture Gaussian (``d = 3 * 256^2``) of ``fabric.png``: ``"adsn-fabric"`` (published)
  or ``"adsn-fabric-computed"`` (:func:`adsn_spectrum` on the image);
- :func:`power_law`, a deterministic synthetic spectrum for tests and offline examples.

Files are looked up in ``$ODESDE_DATA`` and then in the user cache (``$XDG_CACHE_HOME/odesde``
or ``~/.cache/odesde``). Published files are checked against their sha256 prefixes. Computed
spectra are written to the cache atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
from jaxtyping import Float, UInt8

from .utils.files import atomic_open, sha256

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
"""The official CIFAR-10 download (python pickle batches)."""
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
"""md5 of the official ``cifar-10-python.tar.gz``, as published with the dataset."""
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"

PUBLISHED = {
    "cifar10-2024": ("cifar10_eigenvalues_2024.npy", "18c507a2742e69d8"),
    "cifar10-2025": ("cifar10_eigenvalues_2025.npy", "5c896e4125f16a1e"),
    "adsn-fabric": ("adsn_fabric_eigenvalues.npy", "098952779b1ecb6f"),
}
"""Published spectra (Pierret & Galerne's repositories): file name and sha256 prefix."""
COMPUTED = {
    "cifar10": "cifar10_eigenvalues_computed.npy",
    "adsn-fabric-computed": "adsn_fabric_eigenvalues_computed.npy",
}
"""Spectra this module computes itself, and their cache file names."""
FABRIC = ("fabric.png", "8b626127174b4495")
NAMES = tuple(PUBLISHED) + tuple(COMPUTED)


def cache_dir() -> Path:
    """The user cache: ``$XDG_CACHE_HOME/odesde``, else ``~/.cache/odesde``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "odesde"


def search_dirs() -> list[Path]:
    """Folders searched for data files: ``$ODESDE_DATA`` (if set), then :func:`cache_dir`."""
    dirs = [Path(os.environ["ODESDE_DATA"])] if os.environ.get("ODESDE_DATA") else []
    return dirs + [cache_dir()]


def find(filename: str, *, subdir: str = "") -> Path | None:
    """The first existing ``subdir/filename`` in :func:`search_dirs`, or ``None``."""
    for folder in search_dirs():
        if (folder / subdir / filename).is_file():
            return folder / subdir / filename
    return None


def _missing(filename: str, why: str) -> FileNotFoundError:
    where = ", ".join(str(d) for d in search_dirs())
    return FileNotFoundError(
        f"{filename} not found (looked in: {where}) and it cannot be computed here: {why}. "
        f"Set ODESDE_DATA to a folder that holds {filename}, or put it in {cache_dir()}."
    )


def _check_sha(path: Path, prefix: str) -> None:
    actual = sha256(path)
    if not actual.startswith(prefix):
        raise ValueError(
            f"{path} has sha256 {actual[:16]}..., expected the published file's {prefix}...: "
            "it is not the published spectrum (recomputed spectra are cached under other names)"
        )


def atomic_save(path: Path, array: np.ndarray) -> Path:
    """Save ``array`` as ``.npy`` at ``path`` atomically (write a temporary file, rename)."""
    path = Path(path)
    with atomic_open(path) as handle:
        np.save(handle, array)
    return path


def normalise(lam: np.ndarray) -> Float[np.ndarray, " d"]:
    """float64, with ``-0.0`` (the published zeros) made ``+0.0`` (digest Sec. 3)."""
    return np.maximum(np.asarray(lam, dtype=np.float64), 0.0) + 0.0


def load(name: str) -> Float[np.ndarray, " d"]:
    """Load a spectrum by name, computing and caching it when possible.

    Args:
        name: ``"cifar10-2024"``, ``"cifar10-2025"``, ``"adsn-fabric"`` (published files:
            looked up in ``$ODESDE_DATA`` and the cache, sha256-checked), ``"cifar10"``
            (recomputed from the CIFAR-10 download) or ``"adsn-fabric-computed"`` (from
            ``fabric.png``). A published CIFAR/ADSN file that is missing falls back to the
            recomputed spectrum, with a warning: it matches the published one except in the
            smallest eigenvalues (digest Sec. 4).

    Returns:
        float64 eigenvalues, ``-0.0`` normalised to ``+0.0``.

    Raises:
        FileNotFoundError: the spectrum is missing and cannot be computed (no network for
            CIFAR-10, no ``fabric.png``); the message names ``ODESDE_DATA`` and the file.
    """
    if name not in NAMES:
        raise ValueError(f"spectrum name={name!r} is unknown: allowed are {NAMES}")
    if name in PUBLISHED:
        filename, prefix = PUBLISHED[name]
        path = find(filename)
        if path is not None:
            _check_sha(path, prefix)
            return normalise(np.load(path))
        fallback = "cifar10" if name.startswith("cifar10") else "adsn-fabric-computed"
        try:
            lam = load(fallback)
        except FileNotFoundError as err:
            raise _missing(filename, f"recomputing it failed ({err})") from err
        warnings.warn(
            f"{filename} not found in ODESDE_DATA or {cache_dir()}: using the spectrum "
            f"recomputed by odesde ({fallback!r}), which differs from the published one in "
            "its smallest eigenvalues, so published table digits may differ",
            stacklevel=2,
        )
        return lam
    filename = COMPUTED[name]
    path = find(filename)
    if path is None:
        try:
            lam = cifar10_spectrum() if name == "cifar10" else adsn_spectrum(load_fabric())
        except FileNotFoundError as err:
            raise _missing(filename, str(err)) from err
        path = atomic_save(cache_dir() / filename, lam)
    return normalise(np.load(path))


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def download_cifar10(*, url: str | None = None, md5: str | None = None) -> Path:
    """The CIFAR-10 python archive, downloaded once into the cache (atomically, md5-checked).

    Args:
        url: download address (default :data:`CIFAR10_URL`).
        md5: expected md5 of the archive (default :data:`CIFAR10_MD5`).

    Returns:
        Path of the archive.
    """
    url = url or CIFAR10_URL
    md5 = md5 or CIFAR10_MD5
    for folder in search_dirs():
        if (folder / CIFAR10_ARCHIVE).is_file():
            return folder / CIFAR10_ARCHIVE
    target = cache_dir() / CIFAR10_ARCHIVE
    try:
        digest = hashlib.md5()
        with atomic_open(target) as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
            # Raised inside the block: a corrupt download never becomes the cached archive.
            if digest.hexdigest() != md5:
                raise ValueError(f"download from {url} has md5 {digest.hexdigest()}, expected {md5}")
    except OSError as err:
        raise _missing(CIFAR10_ARCHIVE, f"downloading {url} failed ({err})") from err
    return target


def read_cifar10_train(archive: Path) -> UInt8[np.ndarray, "n 3072"]:
    """The 50,000 training images of a CIFAR-10 python archive, as uint8 rows.

    Each row is one image flattened channel-first (1024 red, 1024 green, 1024 blue values,
    row-major): the ``data_batch_1`` ... ``data_batch_5`` pickles, in order.
    """
    rows = []
    with tarfile.open(archive, "r:gz") as tar:
        for i in range(1, 6):
            member = tar.extractfile(f"cifar-10-batches-py/data_batch_{i}")
            if member is None:
                raise ValueError(f"{archive} has no cifar-10-batches-py/data_batch_{i}")
            batch = pickle.load(io.BytesIO(member.read()), encoding="bytes")
            rows.append(np.asarray(batch[b"data"], dtype=np.uint8))
    data = np.concatenate(rows)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{archive}: expected images of 3072 values, got shape {data.shape}")
    return data


def covariance_spectrum(
    images: UInt8[np.ndarray, "n d"], *, batch: int = 5000
) -> Float[np.ndarray, " d"]:
    """Eigenvalues of the covariance of images scaled to ``[-1, 1]`` (digest Sec. 4).

    ``ToTensor`` then ``Normalize(0.5, 0.5)`` (``x / 127.5 - 1``), the unbiased covariance
    (divisor ``n - 1``) in float32 as ``torch.cov``, the symmetric eigenvalues, and the
    negative eigenvalues clipped by the mask ``(lam > 0)`` (which stores them as ``-0.0``).
    The paper calls ``numpy.linalg.eigh``; LAPACK's ``syev`` without eigenvectors gives the
    same eigenvalues up to rounding (``~1e-7 * max``), about 10x faster for ``d = 3072``.

    Args:
        images: uint8 rows, one flattened image each.
        batch: rows per block when accumulating the covariance (memory only).

    Returns:
        The eigenvalues, ascending, float32 like the published files.
    """
    images = np.asarray(images)
    n, d = images.shape
    if n < 2:
        raise ValueError(f"images: need at least 2 rows for a covariance, got {n}")
    scaled = lambda rows: (rows.astype(np.float32) / np.float32(255) - np.float32(0.5)) / (
        np.float32(0.5)
    )
    mean = np.zeros(d, dtype=np.float64)
    for i in range(0, n, batch):
        mean += scaled(images[i : i + batch]).sum(axis=0, dtype=np.float64)
    mean = (mean / n).astype(np.float32)
    cov = np.zeros((d, d), dtype=np.float32)
    for i in range(0, n, batch):
        centred = scaled(images[i : i + batch]) - mean
        cov += centred.T @ centred
    cov /= np.float32(n - 1)
    lam = scipy.linalg.eigh(cov, eigvals_only=True, driver="ev")
    return lam * (lam > 0)


def cifar10_spectrum(*, url: str | None = None, md5: str | None = None) -> np.ndarray:
    """The CIFAR-10 Gaussian's spectrum, recomputed from the official download."""
    return covariance_spectrum(read_cifar10_train(download_cifar10(url=url, md5=md5)))


# ---------------------------------------------------------------------------------------------
# ADSN texture


def load_fabric() -> UInt8[np.ndarray, "256 256 3"]:
    """The texture exemplar ``fabric.png`` from ``$ODESDE_DATA`` or the cache."""
    from PIL import Image

    filename, prefix = FABRIC
    path = find(filename)
    if path is None:
        raise _missing(filename, "the texture image is not shipped with odesde")
    _check_sha(path, prefix)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def periodic_component_fft(
    u: Float[np.ndarray, "c m n"],
) -> np.ndarray:
    """Unnormalised DFT of Moisan's periodic component of each channel (``perdecomp_fft``).

    The interior Laplacian ``L(x) = sum over 4-neighbours y inside the image of u(x) - u(y)``,
    its DFT divided by ``4 - 2 cos(2 pi k / M) - 2 cos(2 pi l / N)``; the DC term is the sum.

    Args:
        u: channels, shape ``(c, M, N)``.

    Returns:
        Complex DFT of the periodic component, shape ``(c, M, N)``.
    """
    u = np.asarray(u, dtype=np.float64)
    lap = np.zeros_like(u)
    # Each pair of neighbours inside the image adds u(x) - u(y) to x and u(y) - u(x) to y.
    dv = u[:, 1:, :] - u[:, :-1, :]
    lap[:, 1:, :] += dv
    lap[:, :-1, :] -= dv
    dh = u[:, :, 1:] - u[:, :, :-1]
    lap[:, :, 1:] += dh
    lap[:, :, :-1] -= dh
    m, n = u.shape[-2:]
    k = np.arange(m)[:, None]
    l = np.arange(n)[None, :]
    denom = 4.0 - 2.0 * np.cos(2 * np.pi * k / m) - 2.0 * np.cos(2 * np.pi * l / n)
    denom[0, 0] = 1.0
    p_hat = np.fft.fft2(lap) / denom
    p_hat[:, 0, 0] = u.sum(axis=(-2, -1))
    return p_hat


def adsn_spectrum(image: UInt8[np.ndarray, "m m 3"]) -> Float[np.ndarray, " d"]:
    """Eigenvalues of the ADSN Gaussian of an RGB texture (digest Sec. 4).

    ``t_c = (u_c - mean_c) / sqrt(M N)`` with ``u = image / 255``; ``p_hat`` the DFT of its
    periodic component (:func:`periodic_component_fft`); the covariance is rank one per
    frequency, ``p_hat(xi) p_hat(xi)^*``, with eigenvalue ``sum_c |p_hat_c(xi)|^2`` and two
    zeros.

    Args:
        image: uint8 array ``(M, N, 3)``.

    Returns:
        float64 ``(3 M N,)``: the ``M N`` frequency eigenvalues in centred (``fftshift``)
        order, then ``2 M N`` zeros, as the published file.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 of shape (M, N, 3), got {image.dtype} "
                         f"{image.shape}")
    u = np.moveaxis(image.astype(np.float64) / 255.0, -1, 0)
    m, n = u.shape[-2:]
    t = (u - u.mean(axis=(-2, -1), keepdims=True)) / np.sqrt(m * n)
    lam = np.sum(np.abs(periodic_component_fft(t)) ** 2, axis=0)
    return np.concatenate([np.fft.fftshift(lam).ravel(), np.zeros(2 * m * n)])


# ---------------------------------------------------------------------------------------------
# Synthetic


def synthetic_texture(size: int = 64, *, seed: int = 0) -> UInt8[np.ndarray, "m m 3"]:
    """A deterministic RGB texture for running the ADSN construction without ``fabric.png``.

    Gaussian random-phase noise: white noise of one random field filtered by an anisotropic
    Gaussian in Fourier, mixed into three channels and quantised to ``uint8`` (the same kind
    of image, a stationary Gaussian texture, that ADSN models).

    Args:
        size: side ``M`` of the square image, at least 8.
        seed: seed of the noise (``numpy.random.default_rng``).

    Returns:
        uint8 array ``(size, size, 3)``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size={size!r} must be an integer >= 8")
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)[:, None]
    l = np.fft.fftfreq(size)[None, :]
    spectrum = np.exp(-((k / 0.08) ** 2 + (l / 0.03) ** 2)) + 0.5 * np.exp(-(((k - 0.2) / 0.02) ** 2 + (l / 0.05) ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * spectrum))
    field = (field - field.mean()) / field.std()
    colours = np.array([[0.55, 0.35, 0.25], [0.45, 0.40, 0.30], [0.30, 0.35, 0.40]])
    image = 128 + 40 * (field[..., None] * colours.sum(axis=0) / colours.sum(axis=0).max())
    image = image + rng.normal(0.0, 4.0, (size, size, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def power_law(
    d: int, *, exponent: float, largest: float = 1.0, n_zeros: int = 0
) -> Float[np.ndarray, " d"]:
    """A deterministic spectrum ``largest * i^(-exponent)``, ``i = 1..d - n_zeros``, then zeros.

    A stand-in for image spectra (which decay roughly as a power law) in tests and offline
    examples; ``n_zeros`` exact zeros reproduce the singular covariances of the 2025 CIFAR
    and ADSN spectra (infinite Heun/RK4 errors at ``eps = 0``).

    Args:
        d: dimension.
        exponent: decay exponent, ``> 0``.
        largest: the first eigenvalue, ``> 0``.
        n_zeros: number of trailing zero eigenvalues, ``0 <= n_zeros < d``.

    Returns:
        float64 eigenvalues, decreasing.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d={d!r} must be a positive integer")
    if not exponent > 0:
        raise ValueError(f"exponent={exponent!r} must be > 0")
    if not largest > 0:
        raise ValueError(f"largest={largest!r} must be > 0")
    if isinstance(n_zeros, bool) or not isinstance(n_zeros, (int, np.integer)) or not (
        0 <= n_zeros < d
    ):
        raise ValueError(f"n_zeros={n_zeros!r} must be an integer in [0, d) with d={d}")
    i = np.arange(1, d - n_zeros + 1, dtype=np.float64)
    return np.concatenate([largest * i ** (-float(exponent)), np.zeros(n_zeros)])


__all__ = [
    "CIFAR10_URL",
    "NAMES",
    "adsn_spectrum",
    "cache_dir",
    "cifar10_spectrum",
    "covariance_spectrum",
    "load",
    "power_law",
    "synthetic_texture",
]
