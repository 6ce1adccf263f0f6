"""The runner: validation before execution, failures, cache, atomicity, provenance."""

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from fixture_project import REPO, make_project
from odesde.companion import pipeline
from odesde.utils import files, provenance
from odesde.companion.params import ParameterError
from odesde.companion.pipeline import PipelineError, Project

pytestmark = pytest.mark.slow
ODESDE = [sys.executable, "-m", "odesde.companion.cli"]


@pytest.fixture
def project(tmp_path):
    root = make_project(tmp_path / "book")
    return Project.at(root, package_dir=root / "package")


def cli(project, *args, **kwargs):
    return subprocess.run(
        [*ODESDE, "--root", str(project.root), *args],
        capture_output=True, text=True, timeout=kwargs.pop("timeout", 900), **kwargs,
    )


# --- every bad input stops the run before anything executes ---------------------------------

@pytest.mark.parametrize(
    "profile_text, message",
    [
        ("alpha:\n  nn: 2\n", "notebook 'alpha': unknown parameter 'nn'; declared: fail, mode, n, scale, seed, values"),
        ("alpha:\n  n: two\n", "notebook 'alpha', parameter 'n': bad value 'two' (not an int); allowed: int in [1, 100]"),
        ("alpha:\n  n: 101\n", "notebook 'alpha', parameter 'n': bad value 101; allowed: int in [1, 100]"),
        ("alpha:\n  scale: 0\n", "notebook 'alpha', parameter 'scale': bad value 0.0; allowed: float in (0, 10]"),
        ("alpha:\n  mode: bars\n", "notebook 'alpha', parameter 'mode': bad value 'bars'; allowed: str among {'line', 'scatter'}"),
        ("alpha:\n  values: [1.0, -2.0]\n", "notebook 'alpha', parameter 'values': bad value -2.0; allowed: a list of float in [0, inf)"),
        ("gamma:\n  n: 2\n", "profile 'smoke' names notebook 'gamma', which does not exist; notebooks: alpha, beta"),
    ],
)
def test_bad_profile_stops_before_execution(project, profile_text, message):
    (project.notebooks_dir / "profiles" / "smoke.yaml").write_text(profile_text)
    completed = cli(project, "run", "--profile", "smoke")
    assert completed.returncode == 2
    assert message in completed.stderr
    assert not project.executed_dir.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "n=1000"], "notebook 'alpha', parameter 'n': bad value 1000; allowed: int in [1, 100]"),
        (["-p", "mode=3"], "notebook 'alpha', parameter 'mode': bad value 3 (not a string)"),
        (["-p", "colour=red"], "-p colour: no selected notebook declares this parameter (alpha, beta)"),
        (["-p", "n"], "-p 'n': expected NAME=VALUE"),
        (["--only", "gamma"], "--only 'gamma': no such notebook; notebooks: alpha, beta"),
    ],
)
def test_bad_command_line_stops_before_execution(project, args, message):
    completed = cli(project, "run", "--profile", "smoke", *args)
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert not project.executed_dir.exists()


def test_exponent_floats_are_floats(project):
    assert pipeline.parse_assignments(["scale=1e-1", "values=[1e-5, 2.0E+0]", "mode=1e"]) == {
        "scale": 0.1, "values": [1e-5, 2.0], "mode": "1e"}
    (project.notebooks_dir / "profiles" / "smoke.yaml").write_text("alpha:\n  scale: 5e-1\n")
    assert pipeline.plan(project, "smoke")[0].parameters["scale"] == 0.5


def test_unknown_profile_is_refused(project):
    with pytest.raises(PipelineError, match="profile 'huge': no file .*available profiles: paper, quick, smoke"):
        pipeline.plan(project, "huge")


def test_parameter_applies_only_to_notebooks_declaring_it(project):
    jobs = pipeline.plan(project, "smoke", overrides={"steps": 3})
    assert {job.name: job.parameters.get("steps") for job in jobs} == {"alpha": None, "beta": 3}
    with pytest.raises(ParameterError):
        pipeline.plan(project, "smoke", only=["alpha"], overrides={"steps": 3})


# --- failures -----------------------------------------------------------------------------

def test_failing_notebook_is_named_kept_and_isolated(project):
    assert cli(project, "run", "--profile", "smoke").returncode == 0
    entries_before = sorted(p.name for p in project.cache_dir.iterdir())

    completed = cli(project, "run", "--profile", "smoke", "-p", "fail=true", "--keep-going")
    assert completed.returncode == 1
    assert "error: notebook 'alpha' failed: RuntimeError in cell" in completed.stderr
    assert "(`from odesde.companion.checks import Checks`)" in completed.stderr
    assert "the check failed on purpose" in completed.stderr
    failed = project.executed_dir / "alpha.failed.ipynb"
    assert str(failed) in completed.stderr
    assert failed.is_file()
    errors = [o for c in nbformat.read(failed, as_version=4).cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and errors[0].ename == "RuntimeError"
    # The failed notebook's stale result is withdrawn; the other notebook and the cache remain.
    assert not (project.executed_dir / "alpha.ipynb").exists()
    assert (project.executed_dir / "beta.ipynb").is_file()
    assert "beta" in completed.stdout and "hit" in completed.stdout
    assert sorted(p.name for p in project.cache_dir.iterdir() if not p.name.startswith(".")) == entries_before


def test_a_hung_cell_is_stopped_by_the_cell_timeout(project):
    completed = cli(project, "run", "--profile", "smoke", "--only", "beta", "-p", "hang=true",
                    "--cell-timeout", "10")
    assert completed.returncode == 1
    assert "error: notebook 'beta' failed:" in completed.stderr
    assert "(`import time`) ran longer than the cell timeout of 10 s" in completed.stderr
    assert "--cell-timeout" in completed.stderr
    bad = cli(project, "run", "--profile", "smoke", "--cell-timeout", "0")
    assert bad.returncode != 0 and "--cell-timeout 0" in bad.stderr


def test_failure_stops_remaining_notebooks_without_keep_going(project):
    results = pipeline.run(project, "smoke", overrides={"fail": True}, progress=False)
    assert [(r.name, r.status) for r in results] == [("alpha", "failed"), ("beta", "skipped")]
    assert "--keep-going" in results[1].error


# --- cache --------------------------------------------------------------------------------

def test_cache_hits_and_invalidation(project):
    start = time.perf_counter()
    first = pipeline.run(project, "smoke", progress=False)
    first_seconds = time.perf_counter() - start
    assert [r.cached for r in first] == [False, False]

    start = time.perf_counter()
    second = pipeline.run(project, "smoke", progress=False)
    second_seconds = time.perf_counter() - start
    assert [r.cached for r in second] == [True, True]
    assert second_seconds < 0.1 * first_seconds, (first_seconds, second_seconds)

    # One parameter of one notebook: exactly that notebook re-executes.
    changed = pipeline.run(project, "smoke", overrides={"steps": 2}, progress=False)
    assert [(r.name, r.cached) for r in changed] == [("alpha", True), ("beta", False)]

    # A change in the source tree: every notebook re-executes.
    (project.package_dir / "module.py").write_text("VALUE = 2\n")
    touched = pipeline.run(project, "smoke", progress=False)
    assert [r.cached for r in touched] == [False, False]

    # A change in a code cell: only that notebook.
    nb = nbformat.read(project.notebooks_dir / "beta.ipynb", as_version=4)
    nb.cells[-1].source += "\nprint('changed')"
    nbformat.write(nb, project.notebooks_dir / "beta.ipynb")
    edited = pipeline.run(project, "smoke", progress=False)
    assert [(r.name, r.cached) for r in edited] == [("alpha", True), ("beta", False)]

    forced = pipeline.run(project, "smoke", force=True, progress=False)
    assert [r.cached for r in forced] == [False, False]


def test_cache_key_changes_with_environment(project, monkeypatch):
    key = pipeline.plan(project, "smoke")[0].key
    monkeypatch.setattr(provenance, "environment_fingerprint", lambda: "another environment")
    assert pipeline.plan(project, "smoke")[0].key != key


def test_cache_key_changes_with_the_data_in_sight(project, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("ODESDE_DATA", str(data))
    key = pipeline.plan(project, "smoke")[0].key
    (data / "spectrum.npy").write_bytes(b"0123")
    with_file = pipeline.plan(project, "smoke")[0].key
    assert with_file != key
    (data / "spectrum.npy").write_bytes(b"0124")  # the same size, other contents
    assert pipeline.plan(project, "smoke")[0].key != with_file
    monkeypatch.delenv("ODESDE_DATA")
    assert pipeline.plan(project, "smoke")[0].key != key


def test_cache_hit_restores_the_profile_figures(project):
    pipeline.run(project, "smoke", only=["alpha"], progress=False)
    smoke_png = (project.figures_dir / "fig-alpha-points.png").read_bytes()
    pipeline.run(project, "paper", only=["alpha"], progress=False)
    assert json.loads((project.figures_dir / "manifest.json").read_text())["fig-alpha-points"]["profile"] == "paper"
    results = pipeline.run(project, "smoke", only=["alpha"], progress=False)
    assert results[0].cached
    record = json.loads((project.figures_dir / "manifest.json").read_text())["fig-alpha-points"]
    assert record["profile"] == "smoke" and record["parameters"]["n"] == 2
    assert (project.figures_dir / "fig-alpha-points.png").read_bytes() == smoke_png


def test_interrupted_run_leaves_no_cache_entry(project):
    nb = nbformat.read(project.notebooks_dir / "alpha.ipynb", as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell("import time\ntime.sleep(60)"))
    nbformat.write(nb, project.notebooks_dir / "alpha.ipynb")
    process = subprocess.Popen(
        [*ODESDE, "--root", str(project.root), "run", "--profile", "smoke", "--only", "alpha"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            staging = list(project.cache_dir.glob(".tmp-alpha-*/notebook.ipynb"))
            if staging:
                break
            time.sleep(0.2)
        assert staging, "the run never started executing"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert not [p for p in project.cache_dir.iterdir() if not p.name.startswith(".tmp-")]
    assert not (project.executed_dir / "alpha.ipynb").exists()
    # The next run ignores the debris and executes from scratch.
    nb.cells.pop(2)
    nbformat.write(nb, project.notebooks_dir / "alpha.ipynb")
    results = pipeline.run(project, "smoke", only=["alpha"], progress=False)
    assert results[0].status == "ok" and not results[0].cached


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


# --- provenance -----------------------------------------------------------------------------

def test_figure_provenance_in_manifest_and_files(project):
    pipeline.run(project, "quick", only=["alpha"], progress=False)
    record = json.loads((project.figures_dir / "manifest.json").read_text())["fig-alpha-points"]
    assert record["notebook"] == "alpha"
    assert record["profile"] == "quick"
    assert record["parameters"] == {
        "seed": 0, "n": 4, "scale": 1.0, "mode": "line", "values": [0.5, 1.5], "fail": False,
    }
    assert record["git_commit"]
    assert record["packages"]["jax"] and record["packages"]["odesde"]
    assert len(record["data_sha256"]) == 64
    assert record["time"].endswith("+00:00")

    png = Image.open(project.figures_dir / "fig-alpha-points.png")
    assert json.loads(png.text["odesde-provenance"]) == record
    assert _pdf_subject(project.figures_dir / "fig-alpha-points.pdf") == record
    assert _svg_description(project.figures_dir / "fig-alpha-points.svg") == record

    executed = nbformat.read(project.executed_dir / "alpha.ipynb", as_version=4)
    assert executed.metadata["odesde"]["profile"] == "quick"
    assert executed.metadata["kernelspec"]["name"] == "python3"
    glued = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "scrapbook" in o.get("metadata", {})]
    assert glued and glued[0]["metadata"]["scrapbook"]["name"] == "fig-alpha-points"


def _pdf_subject(path):
    data = path.read_bytes()
    start = data.index(b"/Subject (") + len(b"/Subject (")
    chars, depth, index = [], 0, start
    while True:
        char = data[index:index + 1]
        if char == b"\\":
            chars.append(data[index + 1:index + 2])
            index += 2
            continue
        if char == b"(":
            depth += 1
        elif char == b")":
            if depth == 0:
                break
            depth -= 1
        chars.append(char)
        index += 1
    return json.loads(b"".join(chars))


def _svg_description(path):
    import html
    import re

    text = path.read_text()
    match = re.search(r"<dc:description>(.*?)</dc:description>", text, re.S)
    return json.loads(html.unescape(match.group(1)))


def test_data_hash_is_stable_and_sensitive():
    import numpy as np

    a = {"x": np.arange(3.0), "y": [np.ones(2), np.zeros(1)]}
    assert provenance.data_sha256(a) == provenance.data_sha256({"y": [np.ones(2), np.zeros(1)], "x": np.arange(3.0)})
    assert provenance.data_sha256(a) != provenance.data_sha256({"x": np.arange(3.0) + 1e-12, "y": a["y"]})
    assert provenance.data_sha256(np.arange(3)) != provenance.data_sha256(np.arange(3.0))


def test_parallel_jobs_give_the_same_results(project, tmp_path):
    results = pipeline.run(project, "smoke", jobs=2, progress=False)
    assert [r.status for r in results] == ["ok", "ok"]
    assert set(json.loads((project.figures_dir / "manifest.json").read_text())) == {"fig-alpha-points"}


def test_list_shows_parameters(project):
    completed = cli(project, "list")
    assert completed.returncode == 0
    assert "alpha\n" in completed.stdout
    assert "n = 3  (int in [1, 100])  number of points" in completed.stdout
    assert "mode = 'line'  (str among {'line', 'scatter'})  how to draw" in completed.stdout


def test_clean_removes_build(project):
    pipeline.run(project, "smoke", only=["beta"], progress=False)
    assert cli(project, "clean").returncode == 0
    assert not project.build_dir.exists()


def test_book_refuses_unexecuted_notebooks(project):
    from odesde.companion.book import build

    with pytest.raises(PipelineError, match="notebook 'alpha' is in _toc.yml but has no executed copy"):
        build(project, quiet=True)


def test_fixture_book_builds_strictly_with_numbered_citable_figures(project):
    from odesde.companion.book import build

    shutil.copytree(REPO / "book" / "_ext", project.root / "book" / "_ext")
    shutil.copyfile(REPO / "book" / "favicon.svg", project.root / "book" / "favicon.svg")
    pipeline.run(project, "smoke", progress=False)
    index = build(project, quiet=True)
    chapter = (index.parent / "notebooks" / "alpha.html").read_text()
    assert 'id="fig-alpha-points"' in chapter
    assert 'id="check-1"' in chapter and 'id="check-3"' in chapter  # rows the overview links to
    assert "Fig. 1" in chapter  # numbered, and {numref} resolved to the number
    import re

    figure_page = re.sub(r"<[^>]+>", "", (index.parent / "book" / "figures.html").read_text())
    assert "@misc{odesde_fig_alpha_points" in figure_page
    assert "notebooks/alpha.html#fig-alpha-points" in figure_page
    for ext in ("png", "pdf", "svg", "json"):
        assert list((index.parent / "_downloads").rglob(f"fig-alpha-points.{ext}")), ext
    assert (index.parent / "_static" / "mathjax" / "tex-chtml.js").is_file()
    results = re.sub(r"<[^>]+>", "", (index.parent / "book" / "results.html").read_text())
    assert "the figure names its notebook" in results and "reproduced" in results
    assert "the sum of range" in results and "measured" in results
    assert "n-bound" in results and "a bound the fixture sets itself" in results  # the registry


def test_overview_counts_the_checks_and_refuses_what_it_cannot_trust(project):
    import json

    from odesde.companion.book import results_overview

    pipeline.run(project, "smoke", progress=False)
    page = results_overview(project, ["alpha", "beta"])
    assert "| {doc}`../notebooks/alpha` | `smoke` | 0 | 2 | 1 | 0 | 0 |" in page
    assert "| {doc}`../notebooks/beta` | `smoke` | 0 | 1 | 0 | 0 | 0 |" in page
    assert '<a href="../notebooks/alpha.html#check-3">3</a>' in page
    path = project.figures_dir / "checks-alpha.json"
    record = json.loads(path.read_text())
    record["checks"][0]["passed"] = False  # a failure that is not a registered difference
    path.write_text(json.dumps(record))
    with pytest.raises(PipelineError, match="not a registered 'differs'"):
        results_overview(project, ["alpha"])
    record["checks"][0].update(passed=False, kind="differs", criterion="n-bound")
    path.write_text(json.dumps(record))  # n-bound is declared, but not as one that may differ
    with pytest.raises(PipelineError, match="not declared 'may_differ: true'"):
        results_overview(project, ["alpha"])
    record["checks"][0].update(passed=True, kind="trend", criterion="invented")
    path.write_text(json.dumps(record))
    with pytest.raises(PipelineError, match="criterion 'invented' .* is not declared"):
        results_overview(project, ["alpha"])
    record["checks"] = []
    path.write_text(json.dumps(record))
    with pytest.raises(PipelineError, match="empty list of checks"):
        results_overview(project, ["alpha"])
    executed = project.executed_dir / "beta.ipynb"
    nb = nbformat.read(executed, as_version=4)
    nb.cells[-1].source = nb.cells[-1].source.replace("checks.assert_all()", "pass")
    nbformat.write(nb, executed)
    with pytest.raises(PipelineError, match="last code cell must assert"):
        results_overview(project, ["beta"])
