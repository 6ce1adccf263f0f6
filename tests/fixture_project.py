"""A small book for exercising the pipeline: two fast notebooks, profiles, a page and a TOC."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]

ALPHA_PARAMETERS = """\
seed: int = 0  # [0, 1000] root of the random key
n: int = 3  # [1, 100] number of points
scale: float = 1.0  # (0, 10] multiplies the data
mode: str = "line"  # {"line", "scatter"} how to draw
values: list[float] = [0.5, 1.5]  # [0, inf) extra values
fail: bool = False  # raise in the checks cell, to test failures
"""

ALPHA_CODE = """\
import numpy as np
from odesde.companion import figures

figures.use_style()
x = np.arange(n) * scale + sum(values) + seed
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot(x, "o-" if mode == "line" else "o")
ax.set_xlabel("index")
ax.set_ylabel("value")
record = figures.save(fig, "fig-alpha-points", data={"x": x})
"""

ALPHA_CHECKS = """\
from odesde.companion.checks import Checks

if fail:
    raise RuntimeError("the check failed on purpose")
checks = Checks()
checks.true("the figure names its notebook", record["notebook"] == "alpha", paper="alpha", book=record["notebook"],
            oracle="closed form")
checks.less("n is at most the registered bound", n, checks.threshold("n-bound"), oracle="book criterion",
            criterion="n-bound")
checks.measured("the last point", float(x[-1]))
display(checks.report())
checks.assert_all()
"""

BETA_PARAMETERS = """\
steps: int = 2  # [1, 10] loop length
hang: bool = False  # sleep in a cell, to test the cell timeout
"""


def _notebook(title: str, parameters: str, *cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(f"# {title}")]
    nb.cells.append(new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    for cell in cells:
        nb.cells.append(new_markdown_cell(cell[3:]) if cell.startswith("md:") else new_code_cell(cell))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def make_project(root: Path, *, with_package: bool = True) -> Path:
    """Writes the fixture book into ``root`` and returns it."""
    (root / "notebooks" / "profiles").mkdir(parents=True)
    (root / "book").mkdir()
    alpha = _notebook(
        "Alpha", ALPHA_PARAMETERS, ALPHA_CODE,
        "md:" + textwrap.dedent("""\
        ```{glue:figure} fig-alpha-points
        :name: fig-alpha-points

        Points of the alpha notebook, for the pipeline tests.
        ```

        See {numref}`fig-alpha-points`, and the equation $e^{i\\pi} + 1 = 0$.
        """),
        ALPHA_CHECKS,
    )
    beta = _notebook("Beta", BETA_PARAMETERS,
                     "import time\nwhile hang:\n    time.sleep(1)\ntotal = sum(range(steps))\nprint(total)",
                     "from odesde.companion.checks import Checks\nchecks = Checks()\n"
                     "checks.close('the sum of range', total, steps * (steps - 1) / 2, oracle='closed form')\n"
                     "checks.assert_all()")
    nbformat.write(alpha, root / "notebooks" / "alpha.ipynb")
    nbformat.write(beta, root / "notebooks" / "beta.ipynb")
    profiles = {
        "smoke": "alpha:\n  n: 2\nbeta:\n  steps: 1\n",
        "quick": "alpha:\n  n: 4\n",
        "paper": "alpha:\n  n: 5\n  mode: scatter\n",
    }
    for name, text in profiles.items():
        (root / "notebooks" / "profiles" / f"{name}.yaml").write_text(text)
    (root / "notebooks" / "criteria.yaml").write_text(textwrap.dedent("""\
        alpha:
          n-bound:
            claim: the fixture's n stays small
            threshold: 10
            reason: a bound the fixture sets itself
            source: tests/fixture_project.py
        """))
    shutil.copyfile(REPO / "_config.yml", root / "_config.yml")
    (root / "_toc.yml").write_text(textwrap.dedent("""\
        format: jb-book
        root: book/intro
        chapters:
          - file: notebooks/alpha
          - file: notebooks/beta
          - file: book/results
          - file: book/figures
        """))
    (root / "book" / "intro.md").write_text(
        "# Fixture book\n\nA book for the pipeline tests {cite}`pierret2025gaussian`.\n\n"
        "$$\nW_2^2 = \\sum_i (\\sqrt{\\lambda_i} - \\sqrt{\\mu_i})^2\n$$\n\n"
        "```{bibliography}\n```\n"
    )
    shutil.copyfile(REPO / "book" / "references.bib", root / "book" / "references.bib")
    if with_package:
        (root / "package").mkdir()
        (root / "package" / "module.py").write_text("VALUE = 1\n")
    return root
