"""Profiles, validation, cached papermill execution: the engine behind ``odesde run``.

A run validates every selected notebook's parameters first, and only then executes. Each
notebook's result is cached under the sha256 of (its code cells, its parameters, the profile,
the ``odesde`` source tree, the installed distributions, the reference data files in sight);
a hit re-publishes the cached
executed notebook and its figures instead of executing. Entries are built in a temporary
folder and renamed into place, so an interrupted run never leaves a half entry.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nbformat
import yaml

from ..utils import provenance
from ..utils.files import atomic_path, sha256, write_json_atomic
from . import figures, params

PROFILES = ("smoke", "quick", "paper")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` (no dot) as a string: read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str):
    """YAML with exponent floats (``1e-5``) read as floats."""
    return yaml.load(text, Loader=_Loader)


class PipelineError(RuntimeError):
    """A run cannot start or finish: the message says which notebook, what and why."""


@dataclasses.dataclass(frozen=True)
class Project:
    """Where a book's pieces live.

    Args:
        root: the folder with ``_config.yml``, ``_toc.yml``, ``book/`` and ``notebooks/``.
        build_dir: outputs (``executed/``, ``figures/``, ``cache/``, ``html/``); default
            ``root/_build``.
        package_dir: the source tree whose hash keys the cache; default: ``odesde`` itself.
    """

    root: Path
    build_dir: Path
    package_dir: Path

    @classmethod
    def at(cls, root=None, *, build_dir=None, package_dir=None) -> "Project":
        if root is None:
            root = provenance.find_root()
            if root is None:
                raise PipelineError(
                    "no book here: run from the odesde repository (the folder with _config.yml "
                    "and notebooks/) or pass --root"
                )
        root = Path(root).resolve()
        if not (root / "notebooks").is_dir():
            raise PipelineError(f"root {str(root)!r} has no notebooks/ folder")
        return cls(
            root=root,
            build_dir=Path(build_dir).resolve() if build_dir else root / "_build",
            package_dir=Path(package_dir or Path(__file__).parents[1]).resolve(),
        )

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    @property
    def executed_dir(self) -> Path:
        return self.build_dir / "executed"

    @property
    def figures_dir(self) -> Path:
        return self.build_dir / "figures"

    @property
    def cache_dir(self) -> Path:
        return self.build_dir / "cache"

    def notebooks(self) -> dict[str, Path]:
        """The book's notebooks by name, in name order."""
        return {p.stem: p for p in sorted(self.notebooks_dir.glob("*.ipynb"))}


@dataclasses.dataclass
class Job:
    name: str
    path: Path
    parameters: dict[str, Any]
    key: str = ""


@dataclasses.dataclass
class Result:
    name: str
    status: str  # "ok" or "failed"
    cached: bool
    seconds: float
    error: str = ""


def load_profile(project: Project, profile: str) -> dict[str, dict[str, Any]]:
    """Per-notebook parameter values of a profile, checked against the notebooks that exist."""
    path = project.notebooks_dir / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise PipelineError(
            f"profile {profile!r}: no file {path}; available profiles: {', '.join(available)}"
        )
    values = read_yaml(path.read_text()) or {}
    if not isinstance(values, dict):
        raise PipelineError(f"profile {profile!r}: {path} must map notebook names to parameters")
    notebooks = project.notebooks()
    for name, overrides in values.items():
        if name not in notebooks:
            raise PipelineError(
                f"profile {profile!r} names notebook {name!r}, which does not exist; "
                f"notebooks: {', '.join(notebooks)}"
            )
        if not isinstance(overrides, dict):
            raise PipelineError(
                f"profile {profile!r}, notebook {name!r}: expected a mapping of parameters, "
                f"got {overrides!r}"
            )
    return values


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs from the command line; values read as YAML (``3``, ``1e-3``, ``[1, 2]``)."""
    assignments = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise PipelineError(f"-p {item!r}: expected NAME=VALUE")
        try:
            assignments[name.strip()] = read_yaml(text)
        except yaml.YAMLError as err:
            raise PipelineError(f"-p {item!r}: cannot read the value ({err})") from None
    return assignments


def plan(
    project: Project,
    profile: str,
    *,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Job]:
    """Validates a run and returns its jobs; raises before anything executes."""
    notebooks = project.notebooks()
    if not notebooks:
        raise PipelineError(f"no notebooks in {project.notebooks_dir}")
    profile_values = load_profile(project, profile)
    selected = list(notebooks) if not only else list(dict.fromkeys(only))
    for name in selected:
        if name not in notebooks:
            raise PipelineError(
                f"--only {name!r}: no such notebook; notebooks: {', '.join(notebooks)}"
            )
    declared = {name: params.declared_parameters(notebooks[name]) for name in selected}
    overrides = overrides or {}
    for name in overrides:
        if not any(name in d for d in declared.values()):
            raise params.ParameterError(
                f"-p {name}: no selected notebook declares this parameter "
                f"({', '.join(selected)})"
            )
    jobs = []
    for name in selected:
        values = dict(profile_values.get(name, {}))
        values.update({k: v for k, v in overrides.items() if k in declared[name]})
        resolved = params.resolve(declared[name], values, notebook=name)
        jobs.append(Job(name=name, path=notebooks[name], parameters=resolved))
    from ..spectra import search_dirs

    fingerprint = {
        "profile": profile,
        "package": provenance.tree_sha256(project.package_dir),
        "environment": provenance.environment_fingerprint(),
        "data": provenance.files_fingerprint(search_dirs()),
        # The registry holds thresholds the checks read: a changed criterion re-runs the checks.
        "criteria": _file_fingerprint(project.root / "notebooks" / "criteria.yaml"),
    }
    for job in jobs:
        job.key = cache_key(job, fingerprint)
    return jobs


def _file_fingerprint(path: Path) -> str:
    return sha256(path) if path.is_file() else "missing"


CELL_TIMEOUT = 7200.0
"""Default limit of one cell's execution, seconds: generous (the longest cell of the `paper`
profile takes about 25 minutes on 2 cores), so that only a hung cell reaches it."""


def cache_key(job: Job, fingerprint: dict[str, str]) -> str:
    """sha256 of the notebook's code cells, its parameters and the code and environment."""
    nb = nbformat.read(job.path, as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    payload = {"code": code, "parameters": job.parameters, **fingerprint}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _kernel_spec_dir(project: Project) -> Path:
    """A kernel spec that runs this very interpreter, whatever else Jupyter finds on the machine."""
    folder = project.build_dir / "jupyter"
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    path = folder / "kernels" / "odesde" / "kernel.json"
    if not path.exists() or json.loads(path.read_text()) != spec:
        write_json_atomic(path, spec)
    return folder


def _execute(job: dict[str, Any]) -> dict[str, Any]:
    """Runs one notebook with papermill into ``job['staging']``; in a worker process."""
    import papermill

    staging = Path(job["staging"])
    (staging / "figures").mkdir(parents=True)
    os.environ.update(
        ODESDE_NOTEBOOK=job["name"],
        ODESDE_PROFILE=job["profile"],
        ODESDE_PARAMETERS=json.dumps(job["parameters"], sort_keys=True),
        ODESDE_FIGURES_DIR=str(staging / "figures"),
        ODESDE_COMMIT=job["commit"],
        JUPYTER_PATH=os.pathsep.join(filter(None, [job["jupyter_path"], os.environ.get("JUPYTER_PATH")])),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    # JAX's persistent compilation cache: a re-run with other parameters recompiles only the
    # programs whose shapes changed. Results do not depend on it (the same programs either way).
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", job["jax_cache"])
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    # Trained models live with the build they belong to, so `--build-dir` (or `make clean`)
    # gives a run that trains from scratch.
    os.environ.setdefault("ODESDE_MODELS", job["models"])
    output = staging / "notebook.ipynb"
    start = time.perf_counter()
    error = ""
    try:
        papermill.execute_notebook(
            job["path"], output, parameters=job["parameters"], kernel_name="odesde",
            cwd=job["cwd"], progress_bar=job["progress"], log_output=False, language="python",
            execution_timeout=job["cell_timeout"],
        )
    except papermill.PapermillExecutionError as err:
        error = _describe_failure(output, err)
    except TimeoutError as err:  # nbclient's CellTimeoutError
        error = (f"{_running_cell(output)} ran longer than the cell timeout of "
                 f"{job['cell_timeout']:g} s (odesde run --cell-timeout) and was stopped: {err}")
    except Exception as err:  # noqa: BLE001 - kernel death, bad notebook: all are failures
        error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    if output.exists():
        nb = nbformat.read(output, as_version=4)
        # Readers open the executed copy in their own Jupyter: name the standard kernel.
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["odesde"] = {
            "profile": job["profile"], "parameters": job["parameters"], "cache_key": job["key"],
            "git_commit": job["commit"], "seconds": round(seconds, 2), "jobs": job["jobs"],
            "machine": provenance.machine(), "packages": provenance.package_versions(),
        }
        nbformat.write(nb, output)
    return {"error": error, "seconds": seconds}


def _running_cell(output: Path) -> str:
    """The last cell papermill started before execution stopped, as ``cell N (`line`)``."""
    found = "a cell"
    if output.exists():
        for index, cell in enumerate(nbformat.read(output, as_version=4).cells):
            if cell.cell_type == "code" and cell.get("metadata", {}).get("papermill", {}).get(
                    "start_time"):
                first = next((line for line in cell.source.splitlines() if line.strip()), "")
                found = f"cell {index} (`{first[:60]}`)"
    return found


def _describe_failure(output: Path, err) -> str:
    # Papermill puts an error banner above the cells, so find the cell by execution count.
    where = f"cell [{err.exec_count}]"
    if output.exists():
        for cell in nbformat.read(output, as_version=4).cells:
            if cell.cell_type == "code" and cell.get("execution_count") == err.exec_count:
                first = next((line for line in cell.source.splitlines() if line.strip()), "")
                where += f" (`{first[:60]}`)"
                break
    return f"{err.ename} in {where}: {err.evalue}"


def _publish(project: Project, name: str, entry: Path) -> None:
    """Makes a cache entry the current result of ``name``: executed notebook and figures."""
    with atomic_path(project.executed_dir / f"{name}.ipynb") as tmp:
        shutil.copyfile(entry / "notebook.ipynb", tmp)
    (project.executed_dir / f"{name}.failed.ipynb").unlink(missing_ok=True)
    new = figures.read_manifest(entry / "figures")
    project.figures_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = project.figures_dir / "manifest.json"
    manifest = figures.read_manifest(project.figures_dir)
    for fig_name, record in list(manifest.items()):
        if record.get("notebook") == name and fig_name not in new:
            for suffix in (".png", ".pdf", ".svg"):
                (project.figures_dir / f"{fig_name}{suffix}").unlink(missing_ok=True)
            del manifest[fig_name]
    (project.figures_dir / f"checks-{name}.json").unlink(missing_ok=True)
    for path in sorted((entry / "figures").glob("fig-*.*")) + sorted((entry / "figures").glob("checks-*.json")):
        with atomic_path(project.figures_dir / path.name) as tmp:
            shutil.copyfile(path, tmp)
    manifest.update(new)
    write_json_atomic(manifest_path, manifest)


def _unpublish(project: Project, name: str, staging: Path) -> Path:
    """Keeps a failed run's executed copy for inspection; the stale result is withdrawn."""
    failed = project.executed_dir / f"{name}.failed.ipynb"
    if (staging / "notebook.ipynb").exists():
        with atomic_path(failed) as tmp:
            shutil.copyfile(staging / "notebook.ipynb", tmp)
    (project.executed_dir / f"{name}.ipynb").unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    return failed


def run(
    project: Project,
    profile: str,
    *,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    jobs: int = 1,
    keep_going: bool = False,
    progress: bool = True,
    cell_timeout: float = CELL_TIMEOUT,
) -> list[Result]:
    """Executes the selected notebooks (see the module docstring); returns one result each.

    A cell that runs longer than ``cell_timeout`` seconds is stopped and fails its notebook,
    naming the cell.
    """
    from tqdm import tqdm

    if jobs < 1:
        raise PipelineError(f"--jobs {jobs}: must be at least 1")
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, (int, float)) \
            or not cell_timeout > 0:
        raise PipelineError(f"--cell-timeout {cell_timeout!r}: must be a positive number of "
                            "seconds")
    planned = plan(project, profile, only=only, overrides=overrides)
    project.executed_dir.mkdir(parents=True, exist_ok=True)
    project.cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    to_run = []
    for job in planned:
        entry = project.cache_dir / f"{job.name}-{job.key[:20]}"
        if not force and (entry / "notebook.ipynb").is_file():
            _publish(project, job.name, entry)
            results[job.name] = Result(job.name, "ok", cached=True, seconds=0.0)
        else:
            to_run.append(job)
    bar = tqdm(total=len(planned), desc=f"odesde run ({profile})", unit="notebook",
               disable=not progress, initial=len(results))
    if to_run:
        commit = provenance.git_commit(project.root)
        jupyter_path = str(_kernel_spec_dir(project))
        payloads = {
            job.name: {
                "name": job.name, "path": str(job.path), "parameters": job.parameters,
                "profile": profile, "key": job.key, "commit": commit,
                "cwd": str(project.notebooks_dir), "jupyter_path": jupyter_path,
                "progress": progress and jobs == 1, "jobs": jobs, "cell_timeout": cell_timeout,
                "jax_cache": str(project.build_dir / "jax-cache"),
                "models": str(project.build_dir / "models"),
                "staging": str(project.cache_dir / f".tmp-{job.name}-{uuid.uuid4().hex[:8]}"),
            }
            for job in to_run
        }
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            pending = {}
            queue = list(to_run)
            stop = False
            while queue or pending:
                while queue and len(pending) < jobs and not stop:
                    job = queue.pop(0)
                    bar.set_postfix_str(job.name)
                    pending[pool.submit(_execute, payloads[job.name])] = job
                if not pending:
                    break
                done, _ = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                for future in done:
                    job = pending.pop(future)
                    staging = Path(payloads[job.name]["staging"])
                    try:
                        outcome = future.result()
                    except Exception as err:  # noqa: BLE001 - a crashed worker is a failure
                        outcome = {"error": f"{type(err).__name__}: {err}", "seconds": 0.0}
                    if outcome["error"]:
                        failed = _unpublish(project, job.name, staging)
                        message = f"{outcome['error']} (executed copy: {failed})"
                        results[job.name] = Result(job.name, "failed", False, outcome["seconds"], message)
                        stop = stop or not keep_going
                    else:
                        entry = project.cache_dir / f"{job.name}-{job.key[:20]}"
                        shutil.rmtree(entry, ignore_errors=True)
                        os.replace(staging, entry)
                        _publish(project, job.name, entry)
                        results[job.name] = Result(job.name, "ok", False, outcome["seconds"])
                    bar.update()
            for job in queue:
                results[job.name] = Result(job.name, "skipped", False, 0.0,
                                           "not run: an earlier notebook failed (use --keep-going)")
    bar.close()
    return [results[job.name] for job in planned]


def summary_table(results: list[Result]) -> str:
    """The closing table of a run: notebook, status, cache, seconds."""
    rows = [("notebook", "status", "cache", "seconds")]
    rows += [(r.name, r.status, "hit" if r.cached else "miss", f"{r.seconds:.1f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(r.seconds for r in results)
    lines.append(f"total {total:.1f} s executing; {sum(r.cached for r in results)} cache hit(s)")
    return "\n".join(lines)


def clean(project: Project) -> None:
    """Removes everything the pipeline built."""
    shutil.rmtree(project.build_dir, ignore_errors=True)
