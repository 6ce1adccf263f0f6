"""Where a result came from: commit, package versions, machine, hashes of data and trees."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from . import files

#: The packages whose versions are recorded beside every figure.
RECORDED_PACKAGES = (
    "odesde", "jax", "jaxlib", "numpy", "scipy", "numpyro", "equinox", "diffrax", "optax",
    "pot", "matplotlib", "papermill", "jupyter-book",
)


def find_root(start: Path | None = None) -> Path | None:
    """The book's root: the nearest folder at or above ``start`` holding ``_config.yml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return None


def fingerprint(value: Any) -> Any:
    """A JSON-able, exact description of a parameter: equinox modules by type, tree and leaves,
    arrays by the sha256 of their float64 bytes; other values as they are. For file names that
    hash every training parameter."""
    import equinox as eqx
    import jax

    if isinstance(value, eqx.Module):
        leaves, treedef = jax.tree_util.tree_flatten(value)
        return {"type": type(value).__name__, "tree": str(treedef),
                "leaves": [fingerprint(leaf) for leaf in leaves]}
    if isinstance(value, (jax.Array, np.ndarray)):
        arr = np.ascontiguousarray(np.asarray(value, dtype=np.float64))
        return {"shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    return value


def machine() -> dict[str, Any]:
    """The machine a notebook ran on: CPU model, usable cores, system; for the timing tables."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "system": platform.platform(terse=True)}


def git_commit(root: Path | None = None) -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    cwd = root or find_root() or Path.cwd()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_versions(names=RECORDED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (``"not installed"`` for a missing one)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_fingerprint() -> str:
    """sha256 of every installed distribution's name and version: the resolved environment."""
    pairs = sorted(
        f"{dist.metadata['Name']}=={dist.version}".lower()
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    )
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def tree_sha256(folder: Path) -> str:
    """sha256 of the files under ``folder`` (paths and contents), ignoring byte-code caches."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(files.sha256(path)))
    return digest.hexdigest()


def files_fingerprint(folders) -> str:
    """sha256 of the names and contents of the files under ``folders`` (missing folders count
    too).

    Notebooks read reference data when it is present and say so when it is not: the data a
    run could see is part of what it computed. Contents, not sizes: a file replaced by another
    of the same size changes the fingerprint.
    """
    digest = hashlib.sha256()
    for index, folder in enumerate(folders):
        folder = Path(folder)
        digest.update(f"{index}:{folder.is_dir()}\0".encode())
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
                digest.update(bytes.fromhex(files.sha256(path)))
    return digest.hexdigest()


def data_sha256(data: Any) -> str | None:
    """sha256 of the arrays behind a figure: an array, or a (nested) dict / list of them.

    Arrays are hashed with their dtype and shape, so equal numbers give equal hashes across
    runs and machines.
    """
    if data is None:
        return None
    digest = hashlib.sha256()

    def feed(obj, path="") -> None:
        if isinstance(obj, dict):
            for key in sorted(obj):
                feed(obj[key], f"{path}/{key}")
        elif isinstance(obj, (list, tuple)) and not all(np.isscalar(v) for v in obj):
            for index, item in enumerate(obj):
                feed(item, f"{path}/{index}")
        else:
            array = np.ascontiguousarray(np.asarray(obj))
            digest.update(f"{path}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())

    feed(data)
    return digest.hexdigest()
