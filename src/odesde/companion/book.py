"""Assembling and building the book: ``odesde book``.

The book source is assembled under ``_build/book/``: ``_config.yml``, ``_toc.yml``, ``book/``,
the executed notebooks (at the same relative paths as their sources), the figures with their
provenance, the generated figure index and run table, and a local MathJax. Jupyter Book then
builds it with execution off and warnings as errors; the HTML lands in ``_build/html/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from .. import __version__
from . import figures
from .checks import REGISTRY, STATUSES, count_statuses, load_registry, status_of
from .pipeline import PipelineError, Project

_GLUE_FIGURE = re.compile(r"^(`{3,}|:{3,})\{glue:figure\}\s+(\S+)\s*$")


def toc_files(project: Project) -> list[str]:
    """Every ``file:`` entry of ``_toc.yml``, root first."""
    toc = yaml.safe_load((project.root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def figure_captions(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Caption of each ``{glue:figure}`` directive in a notebook's markdown cells."""
    captions = {}
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for index, line in enumerate(lines):
            match = _GLUE_FIGURE.match(line.strip())
            if not match:
                continue
            fence, body = match.group(1), []
            for inner in lines[index + 1:]:
                if inner.strip() == fence:
                    break
                if not inner.strip().startswith(":"):
                    body.append(inner.strip())
            captions[match.group(2)] = " ".join(filter(None, body))
    return captions


def notebook_title(nb: nbformat.NotebookNode, default: str) -> str:
    """The first markdown heading of a notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return default


def _bibtex(name: str, record: dict, caption: str, page: str, commit: str) -> str:
    key = "odesde_" + name.replace("-", "_")
    first_sentence = caption.split(". ")[0].rstrip(".").replace("{", "").replace("}", "")
    title = f"odesde companion book, Figure ``{name}''"
    if first_sentence:
        title += f": {first_sentence}"
    fields = {
        "title": "{" + title + "}",
        "author": "{{The odesde developers}}",
        "year": "{" + record.get("time", "")[:4] + "}",
        "version": "{" + __version__ + "}",
        "howpublished": "{odesde: a reproducible companion book, version " + __version__
        + ", figure anchor \\#" + name + "}",
        "url": "{" + f"{page}#{name}" + "}",
        "note": "{" + f"git commit {commit}, profile {record.get('profile', '?')}, "
        f"data sha256 {str(record.get('data_sha256'))[:16]}" + "}",
    }
    body = ",\n".join(f"  {field:<12} = {value}" for field, value in fields.items())
    return f"@misc{{{key},\n{body}\n}}"


def figure_index(project: Project, base_url: str) -> str:
    """The figure index page: every figure with its caption, downloads and a BibTeX entry."""
    manifest = figures.read_manifest(project.figures_dir)
    lines = [
        "(figure-index)=",
        "# Figure index",
        "",
        "Every figure of the book, generated from the provenance manifest written by",
        "`odesde.companion.figures.save` when the notebooks ran. Each entry links to the figure, offers",
        "it as PNG, PDF and SVG (the provenance record is embedded in each file's metadata",
        "and given as JSON), and gives a BibTeX entry naming the book, its version, the git",
        "commit and the figure's anchor.",
        "",
    ]
    if not manifest:
        raise PipelineError(
            f"no figures in {project.figures_dir / 'manifest.json'}: run `odesde run` first"
        )
    by_notebook: dict[str, list[str]] = {}
    for name, record in sorted(manifest.items()):
        by_notebook.setdefault(record["notebook"], []).append(name)
    for notebook, names in sorted(by_notebook.items()):
        nb = nbformat.read(project.executed_dir / f"{notebook}.ipynb", as_version=4)
        captions = figure_captions(nb)
        lines += [f"## {notebook_title(nb, notebook)}", "",
                  f"Figures of the chapter {{doc}}`../notebooks/{notebook}`.", ""]
        for name in names:
            record = manifest[name]
            if name not in captions:
                raise PipelineError(
                    f"notebook {notebook!r} saves figure {name!r} but has no "
                    f"{{glue:figure}} {name} directive to caption and number it"
                )
            commit = record.get("git_commit", "unknown")
            page = f"{base_url}notebooks/{notebook}.html"
            downloads = " · ".join(
                f"{{download}}`{label} <../figures/{name}.{ext}>`"
                for label, ext in (("PNG", "png"), ("PDF", "pdf"), ("SVG", "svg"),
                                   ("provenance (JSON)", "json"))
            )
            lines += [
                f"### {{numref}}`{name}` · `{name}`",
                "",
                captions[name],
                "",
                f"Downloads: {downloads}",
                "",
                f"Made by profile `{record.get('profile')}` at commit `{commit[:12]}`;"
                f" data sha256 `{str(record.get('data_sha256'))[:16]}…`.",
                "",
                "```bibtex",
                _bibtex(name, record, captions[name], page, commit),
                "```",
                "",
            ]
    return "\n".join(lines)


def results_overview(project: Project, notebooks: list[str]) -> str:
    """The results overview page, generated from the checks each notebook recorded.

    Refuses a chapter that recorded no checks, one whose last code cell does not assert them,
    and a failed entry that is not a registered *differs*.
    """
    chapters = []
    path = project.root / REGISTRY
    registry = load_registry(path) if path.is_file() else {}
    for name in notebooks:
        path = project.figures_dir / f"checks-{name}.json"
        if not path.is_file():
            raise PipelineError(f"notebook {name!r} recorded no checks ({path}): its last cell must "
                                "call checks.assert_all()")
        record = json.loads(path.read_text())
        nb = nbformat.read(project.executed_dir / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if not code or "checks.assert_all()" not in code[-1].source:
            raise PipelineError(f"notebook {name!r}: its last code cell must assert its checks "
                                "(checks.assert_all())")
        if not record["checks"]:
            raise PipelineError(f"notebook {name!r} recorded an empty list of checks ({path})")
        declared = registry.get(name, {})
        for entry in record["checks"]:
            try:
                status_of(entry)
            except ValueError as err:
                raise PipelineError(f"notebook {name!r}: {err}") from None
            cid = entry.get("criterion", "")
            if entry["kind"] == "differs" and not (cid in declared and declared[cid].may_differ):
                raise PipelineError(f"notebook {name!r}: {entry['claim']!r} differs but criterion "
                                    f"{cid!r} is not declared 'may_differ: true' in {REGISTRY}")
            if cid and cid not in declared:
                raise PipelineError(f"notebook {name!r}: criterion {cid!r} of {entry['claim']!r} "
                                    f"is not declared in {REGISTRY}")
        chapters.append((name, notebook_title(nb, name), record))

    lines = [
        "(results-overview)=",
        "# Results overview",
        "",
        "Every check of the book, with the paper's value and the book's, generated from the checks",
        "that end each chapter (`odesde.companion.checks`) in the run that built this book. Each entry",
        "names its *oracle*, where its target comes from: a number the paper prints (`published`), a",
        "`closed form`, an `independent implementation`, a `Monte-Carlo` estimate, a direction the paper",
        "claims (`paper trend`) or a threshold the book sets and declares before the run (`book",
        "criterion`, listed with its reason at the end of this page). *Gates* marks the entries whose",
        "failure fails the chapter's run; a built book contains none that failed. The others are",
        "*measured* values (reported without a claim, never counted as reproduced), registered",
        "criteria that *differ* in this run (with the reason; the chapter discusses them), and checks",
        "*not checked* by this profile or for missing data (with the reason).",
        "",
        "## Summary",
        "",
        "| chapter | profile | " + " | ".join(STATUSES) + " |",
        "|---|---|" + "---|" * len(STATUSES),
    ]
    totals = dict.fromkeys(STATUSES, 0)
    for name, title, record in chapters:
        counts = count_statuses(record["checks"])
        totals = {k: totals[k] + counts[k] for k in STATUSES}
        lines.append(f"| {{doc}}`../notebooks/{name}` | `{record.get('profile')}` | "
                     + " | ".join(str(counts[k]) for k in STATUSES) + " |")
    lines += ["| **all** | | " + " | ".join(f"**{totals[k]}**" for k in STATUSES) + " |", ""]
    for name, title, record in chapters:
        lines += [f"## {title}", "",
                  f"From {{doc}}`../notebooks/{name}`, profile `{record.get('profile')}`. Each "
                  "entry links to its row in the chapter's checks table.", "",
                  "| | claim | oracle | paper | book | tolerance | status | gates |",
                  "|---|---|---|---|---|---|---|---|"]
        for i, entry in enumerate(record["checks"], 1):
            status = status_of(entry)
            if entry.get("note"):
                status += f": {entry['note']}"
            link = f'<a href="../notebooks/{name}.html#check-{i}">{i}</a>'
            cells = [entry["claim"], entry.get("oracle", ""), entry["paper"], entry["book"],
                     entry["tolerance"], status, "yes" if entry.get("gates") else ""]
            lines.append(f"| {link} | " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    lines += _registry_section(project, [name for name, _, _ in chapters])
    return "\n".join(lines)


def _registry_section(project: Project, notebooks: list[str]) -> list[str]:
    """The registry's criteria of these chapters, with their reasons and sources."""
    try:
        registry = load_registry(project.root / REGISTRY)
    except FileNotFoundError:
        return []
    lines = ["## Criteria declared before the run", "",
             f"The registry `{REGISTRY.as_posix()}`: every threshold the book sets itself and "
             "every criterion a chapter may record as *differs*. A check that is not declared "
             "here cannot be recorded as *differs*.", "",
             "| chapter | criterion | claim | threshold | may differ | reason | source |",
             "|---|---|---|---|---|---|---|"]
    for name in notebooks:
        for cid, entry in registry.get(name, {}).items():
            threshold = "" if entry.threshold is None else f"{entry.threshold:g}"
            cells = [name, f"`{cid}`", entry.claim, threshold, "yes" if entry.may_differ else "",
                     entry.reason, entry.source]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run_table(project: Project, notebooks: list[str]) -> str:
    """Markdown table of the executed notebooks: profile, seconds, commit, cache key; their total
    and the machines they ran on.

    The seconds are those of the execution whose result the book shows (a cache hit keeps the
    time of the run that produced it).
    """
    rows = ["| notebook | profile | seconds | git commit | cache key |", "|---|---|---|---|---|"]
    total, machines, jobs = 0.0, {}, set()
    for name in notebooks:
        meta = nbformat.read(project.executed_dir / f"{name}.ipynb", as_version=4).metadata
        info = meta.get("odesde", {})
        seconds = float(info.get("seconds", float("nan")))
        total += seconds
        rows.append(
            f"| {{doc}}`../notebooks/{name}` | `{info.get('profile', '?')}` | "
            f"{seconds:.1f} | `{str(info.get('git_commit', '?'))[:12]}` | "
            f"`{str(info.get('cache_key', '?'))[:12]}` |"
        )
        if "machine" in info:
            m = info["machine"]
            machines[f"{m['cpu']}, {m['cores']} cores, {m['system']}"] = None
        if "jobs" in info:
            jobs.add(int(info["jobs"]))
    rows.append(f"| **total** | | **{total:.1f}** ({total / 60:.1f} min) | | |")
    lines = ["\n".join(rows), ""]
    if machines:
        lines.append("Executed on: " + "; ".join(machines) + (
            f", with `--jobs {', '.join(map(str, sorted(jobs)))}`." if jobs else "."))
    return "\n".join(lines) + "\n"


def _copy_mathjax(destination: Path) -> None:
    try:
        import mathjax  # the django-static-mathjax distribution: MathJax 3 as static files
    except ImportError:
        raise PipelineError(
            "MathJax is not installed (pip package django-static-mathjax): the book would need "
            "the internet to typeset its equations"
        ) from None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = destination / "mathjax"
    target.mkdir(parents=True)
    shutil.copyfile(es5 / "tex-chtml.js", target / "tex-chtml.js")
    shutil.copytree(es5 / "output" / "chtml" / "fonts" / "woff-v2",
                    target / "output" / "chtml" / "fonts" / "woff-v2")


def assemble(project: Project) -> Path:
    """Writes the book source to ``_build/book/`` and returns that folder."""
    source = project.build_dir / "book"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copyfile(project.root / name, source / name)
    shutil.copytree(project.root / "book", source / "book")
    notebooks = []
    for entry in toc_files(project):
        if entry.startswith("notebooks/"):
            name = entry.split("/", 1)[1].removesuffix(".ipynb")
            executed = project.executed_dir / f"{name}.ipynb"
            if not executed.is_file():
                raise PipelineError(
                    f"notebook {name!r} is in _toc.yml but has no executed copy at {executed}: "
                    f"run `odesde run --profile paper` (or smoke/quick) first"
                )
            (source / "notebooks").mkdir(exist_ok=True)
            shutil.copyfile(executed, source / "notebooks" / f"{name}.ipynb")
            notebooks.append(name)
    config = yaml.safe_load((project.root / "_config.yml").read_text())
    base_url = (config.get("html", {}) or {}).get("baseurl", "") or "../"
    if "book/figures" in toc_files(project):
        (source / "figures").mkdir()
        manifest = figures.read_manifest(project.figures_dir)
        for name, record in manifest.items():
            if record["notebook"] not in notebooks:
                continue
            for ext in ("png", "pdf", "svg"):
                shutil.copyfile(project.figures_dir / f"{name}.{ext}", source / "figures" / f"{name}.{ext}")
            (source / "figures" / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        (source / "book" / "figures.md").write_text(figure_index(project, base_url))
    if "book/results" in toc_files(project):
        (source / "book" / "results.md").write_text(results_overview(project, notebooks))
    generated = source / "book" / "_generated"
    generated.mkdir(exist_ok=True)
    (generated / "runs.md").write_text(run_table(project, notebooks))
    _copy_mathjax(source / "_mathjax")
    return source


def build(project: Project, *, quiet: bool = False) -> Path:
    """Assembles and builds the book strictly; returns ``_build/html/index.html``."""
    source = assemble(project)
    html = project.build_dir / "html"
    work = project.build_dir / "jupyter-book"  # jupyter-book writes to <path-output>/_build/
    shutil.rmtree(html, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    command = [
        str(Path(sys.executable).with_name("jupyter-book")), "build", str(source),
        "--path-output", str(work), "--builder", "html", "-W", "-n", "--keep-going",
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if not quiet:
        # Jupyter Book's own banner names its working folder, not _build/html: keep its log only.
        print("\n".join(line for line in completed.stdout.splitlines()[-12:]
                        if "build succeeded" in line or "warning" in line.lower()))
    if completed.returncode != 0:
        raise PipelineError(
            f"jupyter-book build failed (exit {completed.returncode}); warnings are errors:\n"
            f"{completed.stdout[-6000:]}\n{completed.stderr[-6000:]}"
        )
    if (work / "_build" / "html").is_dir():
        shutil.move(work / "_build" / "html", html)
    index = html / "index.html"
    if not index.is_file():
        raise PipelineError(f"jupyter-book build finished but {index} is missing")
    return index
