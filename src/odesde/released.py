"""The released ODE–SDE histograms of Deveney et al. and their ``W2^2`` tables.

The authors' repository (GitHub ``teojd/ODESDEGap``, folder ``precomputed_dists/``) holds, for
each data set (``blob``, ``circles2``, ``checker``) and FP weight ``w_R`` (0, 0.1, 1, 10), the
64 x 64 histograms of 3M reverse-SDE and probability-flow ODE samples, and of 3M data samples
(digest Sec. 6-7). :func:`load_released` reads one from ``$ODESDE_DATA/deveney/`` or the user
cache, else downloads it from the repository's raw path (sha256-checked, atomic cache write).
:func:`w2_table` recomputes the three ``W2^2`` columns ODE–SDE, ODE–truth and SDE–truth with
:func:`odesde.metrics.grid_w2_squared`.
"""

from __future__ import annotations

import hashlib
import math
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jaxtyping import Float, PRNGKeyArray

from . import metrics, spectra
from .utils.files import atomic_open, sha256

DATASETS = ("blob", "circles2", "checker")
"""The released data sets, in the digest's column order (Mixture, Circles, Checkerboard)."""
WEIGHTS = ("0.0", "0.1", "1.0", "10.0")
"""The FP weights ``w_R`` as they appear in the released file names."""

Kind = Literal["sde", "ode", "truth"]
KINDS = ("sde", "ode", "truth")
PAIRS = {"ode-sde": ("ode", "sde"), "ode-truth": ("ode", "truth"), "sde-truth": ("sde", "truth")}
"""The three compared pairs of the paper's tables."""

RAW_BASE = "https://raw.githubusercontent.com/teojd/ODESDEGap/main/precomputed_dists/"
"""The public download address: the repository's raw file paths under ``precomputed_dists/``."""
SUBDIR = "deveney"

SHA256_PREFIX = {
    "weights_ode_64_3000000_100000_800_blob_0.0.npy": "0d4cbe0dea739220",
    "weights_ode_64_3000000_100000_800_blob_0.1.npy": "8af701f408f415bd",
    "weights_ode_64_3000000_100000_800_blob_1.0.npy": "86d0e328fa9f7475",
    "weights_ode_64_3000000_100000_800_blob_10.0.npy": "9cec2a4ccf8ddd3f",
    "weights_ode_64_3000000_100000_800_checker_0.0.npy": "100bf5a5ea5fc121",
    "weights_ode_64_3000000_100000_800_checker_0.1.npy": "bd70edbfa61c1984",
    "weights_ode_64_3000000_100000_800_checker_1.0.npy": "9efe633db6b351ab",
    "weights_ode_64_3000000_100000_800_checker_10.0.npy": "cc02da4aaff44248",
    "weights_ode_64_3000000_100000_800_circles2_0.0.npy": "f788f6ecadb6ac0a",
    "weights_ode_64_3000000_100000_800_circles2_0.1.npy": "271e4099faebbe21",
    "weights_ode_64_3000000_100000_800_circles2_1.0.npy": "c3490a031b93b8ba",
    "weights_ode_64_3000000_100000_800_circles2_10.0.npy": "209081caf382654c",
    "weights_sde_64_3000000_100000_800_blob_0.0.npy": "4135f6da28809dde",
    "weights_sde_64_3000000_100000_800_blob_0.1.npy": "c3cb155d21af896d",
    "weights_sde_64_3000000_100000_800_blob_1.0.npy": "22404152549c931c",
    "weights_sde_64_3000000_100000_800_blob_10.0.npy": "cd0005bd8e3c9b52",
    "weights_sde_64_3000000_100000_800_checker_0.0.npy": "b564a093838cc8ab",
    "weights_sde_64_3000000_100000_800_checker_0.1.npy": "17ba5bf52ae73358",
    "weights_sde_64_3000000_100000_800_checker_1.0.npy": "0b6e276c3cd30b67",
    "weights_sde_64_3000000_100000_800_checker_10.0.npy": "3f117c626c115c15",
    "weights_sde_64_3000000_100000_800_circles2_0.0.npy": "4cb9bf1499f0754c",
    "weights_sde_64_3000000_100000_800_circles2_0.1.npy": "813f6194da3b06e9",
    "weights_sde_64_3000000_100000_800_circles2_1.0.npy": "293a7b38a0a20dde",
    "weights_sde_64_3000000_100000_800_circles2_10.0.npy": "3850076158cdc9f6",
    "weights_truth_64_3000000_blob.npy": "a72091f54ccb6503",
    "weights_truth_64_3000000_checker.npy": "3c876b76aa6c251a",
    "weights_truth_64_3000000_circles2.npy": "b27febc592725da0",
}
"""sha256 prefixes of the released files (``shared/data/README.md``)."""


def _weight_name(weight) -> str:
    text = weight if isinstance(weight, str) else f"{float(weight):.1f}"
    if text not in WEIGHTS:
        raise ValueError(f"weight={weight!r}: allowed are {', '.join(WEIGHTS)} (w_R)")
    return text


def filename(kind: Kind, dataset: str, weight=None) -> str:
    """The released file name of a histogram.

    Args:
        kind: ``"sde"``, ``"ode"`` or ``"truth"``.
        dataset: ``"blob"``, ``"circles2"`` or ``"checker"``.
        weight: ``w_R`` in ``{0, 0.1, 1, 10}`` (float or the file's string); ``None`` for truth.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: allowed are {', '.join(KINDS)}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: allowed are {', '.join(DATASETS)}")
    if kind == "truth":
        if weight is not None:
            raise ValueError(f"kind='truth' takes no weight, got weight={weight!r}")
        return f"weights_truth_64_3000000_{dataset}.npy"
    if weight is None:
        raise ValueError(f"kind={kind!r} needs a weight among {', '.join(WEIGHTS)}")
    return f"weights_{kind}_64_3000000_100000_800_{dataset}_{_weight_name(weight)}.npy"


def search_dirs() -> list[Path]:
    """``$ODESDE_DATA/deveney`` (if set), then ``<user cache>/deveney``."""
    return [folder / SUBDIR for folder in spectra.search_dirs()]


def find(name: str) -> Path | None:
    """The first existing released file ``name`` in :func:`search_dirs`, or ``None``."""
    return spectra.find(name, subdir=SUBDIR)


def _check_sha(path: Path, name: str) -> None:
    actual = sha256(path)
    if not actual.startswith(SHA256_PREFIX[name]):
        raise ValueError(
            f"{path} has sha256 {actual[:16]}..., expected the released file's "
            f"{SHA256_PREFIX[name]}...: it is not the authors' histogram"
        )


def _download(name: str, base_url: str, timeout: float) -> Path:
    target = spectra.cache_dir() / SUBDIR / name
    target.parent.mkdir(parents=True, exist_ok=True)
    url = base_url + name
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except OSError as error:  # URLError, timeouts, refused connections
        where = ", ".join(str(d) for d in search_dirs())
        raise FileNotFoundError(
            f"released histogram {name} not found (looked in: {where}) and the download from "
            f"{url} failed ({error}). Set ODESDE_DATA to a folder whose deveney/ subfolder "
            f"holds {name} (e.g. shared/data), or put it in {target.parent}."
        ) from error
    digest = hashlib.sha256(payload).hexdigest()
    if not digest.startswith(SHA256_PREFIX[name]):
        raise ValueError(
            f"download of {name} from {url} has sha256 {digest[:16]}..., expected "
            f"{SHA256_PREFIX[name]}...: not cached"
        )
    with atomic_open(target) as f:
        f.write(payload)
    return target


def path_of(kind: Kind, dataset: str, weight=None, *, download: bool = True,
            base_url: str = RAW_BASE, timeout: float = 60.0) -> Path:
    """The local, sha256-checked path of a released histogram (downloaded if allowed)."""
    name = filename(kind, dataset, weight)
    path = find(name)
    if path is None:
        if not download:
            where = ", ".join(str(d) for d in search_dirs())
            raise FileNotFoundError(
                f"released histogram {name} not found (looked in: {where}) and download=False. "
                f"Set ODESDE_DATA to a folder whose deveney/ subfolder holds {name}."
            )
        path = _download(name, base_url, timeout)
    _check_sha(path, name)
    return path


def load_released(kind: Kind, dataset: str, weight=None, *, download: bool = True,
                  base_url: str = RAW_BASE) -> Float[np.ndarray, " 4096"]:
    """One released histogram of Deveney et al. (digest Sec. 6-7).

    Args:
        kind: ``"sde"``, ``"ode"`` or ``"truth"``.
        dataset: ``"blob"`` (Mixture), ``"circles2"`` or ``"checker"``.
        weight: ``w_R`` in ``{0, 0.1, 1, 10}``; ``None`` for ``"truth"``.
        download: fetch a missing file from ``base_url`` into the user cache.
        base_url: the download address (default: the repository's raw ``precomputed_dists/``).

    Returns:
        4096 float64 weights summing to 1; node ``k = 64 i2 + i1`` is ``(a[i1], a[i2])``
        (:func:`odesde.metrics.grid_nodes`); ``reshape(64, 64)`` gives ``W[i2, i1]``.

    Raises:
        FileNotFoundError: the file is absent and cannot be downloaded; names ``ODESDE_DATA``.
        ValueError: a file or download with the wrong sha256.
    """
    w = np.load(path_of(kind, dataset, weight, download=download, base_url=base_url))
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.shape != (4096,) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-9:
        raise ValueError(f"{filename(kind, dataset, weight)}: not 4096 weights summing to 1")
    return w


def available(*, datasets: Iterable[str] = DATASETS, weights: Iterable[str] = WEIGHTS) -> bool:
    """Whether every listed released file is present locally (no download)."""
    names = [filename("truth", d) for d in datasets]
    names += [filename(k, d, w) for k in ("sde", "ode") for d in datasets for w in weights]
    return all(find(n) is not None for n in names)


def w2_table(
    *,
    datasets: Iterable[str] = DATASETS,
    weights: Iterable[str] = WEIGHTS,
    pairs: Iterable[str] = tuple(PAIRS),
    half_width: float = 3.5,
    download: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[tuple[str, str, str], dict]:
    """``W2^2`` between released histograms (digest Sec. 6-7), exact POT ``emd2``.

    Args:
        datasets: data sets to include.
        weights: ``w_R`` values (file strings ``"0.0"``, ``"0.1"``, ``"1.0"``, ``"10.0"``).
        pairs: among ``"ode-sde"``, ``"ode-truth"``, ``"sde-truth"``.
        half_width: the cost grid's half-width: 3.5 is consistent with the binning; 4.0 is
            the authors' table script (every value times ``(4/3.5)^2``, the grid caveat).
        download: allow downloading missing files.
        progress: called with a short label before each transport problem.

    Returns:
        ``{(pair, dataset, weight): {"w2_squared": float, "seconds": float}}``.
    """
    pairs = tuple(pairs)
    for pair in pairs:
        if pair not in PAIRS:
            raise ValueError(f"pair={pair!r}: allowed are {', '.join(PAIRS)}")
    weights = tuple(_weight_name(w) for w in weights)
    out = {}
    for dataset in datasets:
        truth = load_released("truth", dataset, download=download) if any(
            "truth" in p for p in pairs) else None
        for weight in weights:
            hist = {"ode": load_released("ode", dataset, weight, download=download),
                    "sde": load_released("sde", dataset, weight, download=download),
                    "truth": truth}
            for pair in pairs:
                a, b = PAIRS[pair]
                if progress:
                    progress(f"{pair} {dataset} w_R={weight} (grid {half_width})")
                start = time.perf_counter()
                value = metrics.grid_w2_squared(hist[a], hist[b], half_width=half_width)
                out[(pair, dataset, weight)] = {"w2_squared": value,
                                                "seconds": time.perf_counter() - start}
    return out


# --- like for like: the released histograms resampled at a smaller sample size ----------------

_multinomial = jax.jit(lambda key, n, p: jax.random.multinomial(key, n, p))


def resample(histogram, n: int, *, key: PRNGKeyArray) -> Float[np.ndarray, " m"]:
    """The histogram of ``n`` samples drawn from ``histogram``'s weights (multinomial counts
    ``/ n``): what binning ``n`` samples of the released model would give.

    Args:
        histogram: non-negative weights summing to 1 (e.g. a released 4096-weight histogram).
        n: the number of samples, ``>= 1``.
        key: a ``jax.random`` key; the same key gives the same draw.

    Returns:
        float64 weights of the same shape, multiples of ``1 / n`` summing to 1, zero wherever
        ``histogram`` is.
    """
    p = np.asarray(histogram, dtype=np.float64)
    if p.ndim != 1 or p.size < 1 or np.any(~np.isfinite(p)) or np.any(p < 0) \
            or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError("resample: histogram must be a 1-D array of non-negative weights "
                         "summing to 1")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"resample: n must be an integer >= 1, got {n!r}")
    counts = np.asarray(_multinomial(key, jnp.asarray(float(n), dtype=jnp.float64),
                                     jnp.asarray(p / p.sum(), dtype=jnp.float64)),
                        dtype=np.float64)
    if counts.sum() != n:  # the multinomial's counts are exact integers in float64
        raise RuntimeError(f"resample: drew {counts.sum()} samples instead of {n}")
    return counts / n


class DrawStats(NamedTuple):
    """Mean and sample standard deviation (``ddof = 1``) of a statistic over independent draws."""

    mean: float
    sd: float
    values: tuple[float, ...]

    def prediction_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Where one more draw falls with probability ``level`` (normal draws, unknown spread):
        ``mean -+ t(1/2 + level/2, k - 1) sqrt(1 + 1/k) sd`` for ``k`` draws."""
        if not 0 < level < 1:
            raise ValueError(f"level={level!r} must lie in (0, 1)")
        k = len(self.values)
        half = float(scipy.stats.t.ppf(0.5 + level / 2, k - 1)) * math.sqrt(1 + 1 / k) * self.sd
        return self.mean - half, self.mean + half


def draw_stats(values) -> DrawStats:
    """:class:`DrawStats` of the per-draw values of a statistic (at least two)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError(f"draw_stats: needs at least two finite values, got {values!r}")
    return DrawStats(float(v.mean()), float(v.std(ddof=1)), tuple(float(x) for x in v))


def resampled_w2(p, q, *, n_p: int, n_q: int, draws: int, key: PRNGKeyArray,
                 half_width: float = 3.5) -> np.ndarray:
    """``W2^2`` between independent multinomial draws of two histograms, one value per draw.

    Draw ``r`` resamples ``p`` at ``n_p`` with ``fold_in(fold_in(key, r), 0)`` and ``q`` at
    ``n_q`` with ``fold_in(fold_in(key, r), 1)``. With ``q = p`` this is the sampling floor of
    binned ``W2^2`` at that size.

    Returns:
        The ``draws`` values of ``W2^2``; :func:`draw_stats` gives their mean and spread.
    """
    _check_draws(draws)
    out = np.zeros(draws)
    for r in range(draws):
        k = jax.random.fold_in(key, r)
        out[r] = metrics.grid_w2_squared(resample(p, n_p, key=jax.random.fold_in(k, 0)),
                                         resample(q, n_q, key=jax.random.fold_in(k, 1)),
                                         half_width=half_width)
    return out


def _check_draws(draws) -> None:
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2 (a spread needs two), got {draws!r}")


def resampled_w2_table(
    *,
    n: int,
    n_truth: int,
    draws: int,
    key: PRNGKeyArray,
    entries: Iterable[tuple[str, str, str]],
    half_width: float = 3.5,
    download: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[tuple[str, str, str], np.ndarray]:
    """Entries of the ``W2^2`` table recomputed on multinomial draws of the released histograms.

    In each draw every histogram an entry needs is resampled once (:func:`resample`): the SDE
    and ODE histograms of a model at ``n`` samples, the truth of a data set at ``n_truth``
    (one truth draw per data set and draw, shared by its entries, as one truth histogram is
    shared by the retrained models of a data set). Keys: ``fold_in(key, draw)``, then the
    data set, the weight and the kind (their indices in :data:`DATASETS`, :data:`WEIGHTS`,
    :data:`KINDS`), so an entry's draws do not depend on which other entries are asked for.

    Args:
        n: samples per model histogram (SDE, ODE).
        n_truth: samples of the truth histogram.
        draws: independent draws (``>= 2``: a spread needs two).
        key: the root ``jax.random`` key.
        entries: ``(pair, dataset, weight)`` keys as in :func:`w2_table`.
        half_width: the cost grid (3.5, consistent with the binning).
        download: allow downloading missing files.
        progress: called with a short label before each transport problem.

    Returns:
        ``{(pair, dataset, weight): array of the draws' W2^2}`` (length ``draws``); summarise
        an entry, or a statistic of entries of the same draws, with :func:`draw_stats`.
    """
    _check_draws(draws)
    entries = [(pair, dataset, _weight_name(weight)) for pair, dataset, weight in entries]
    for pair, dataset, _ in entries:
        if pair not in PAIRS:
            raise ValueError(f"pair={pair!r}: allowed are {', '.join(PAIRS)}")
        if dataset not in DATASETS:
            raise ValueError(f"dataset={dataset!r}: allowed are {', '.join(DATASETS)}")
    full = {}
    for pair, dataset, weight in entries:
        for kind in PAIRS[pair]:
            name = (kind, dataset, None if kind == "truth" else weight)
            if name not in full:
                full[name] = load_released(*name, download=download)
    out = {entry: np.zeros(draws) for entry in entries}
    for r in range(draws):
        k_draw = jax.random.fold_in(key, r)
        drawn = {}
        for (kind, dataset, weight), histogram in full.items():
            k = jax.random.fold_in(k_draw, DATASETS.index(dataset))
            k = jax.random.fold_in(k, len(WEIGHTS) if weight is None else WEIGHTS.index(weight))
            k = jax.random.fold_in(k, KINDS.index(kind))
            drawn[(kind, dataset, weight)] = resample(
                histogram, n_truth if kind == "truth" else n, key=k)
        for pair, dataset, weight in entries:
            a, b = (drawn[(kind, dataset, None if kind == "truth" else weight)]
                    for kind in PAIRS[pair])
            if progress:
                progress(f"draw {r + 1}/{draws}: {pair} {dataset} w_R={weight}")
            out[(pair, dataset, weight)][r] = metrics.grid_w2_squared(a, b, half_width=half_width)
    return out
