"""The package's layers (src/odesde/README.md): a lower layer never imports a higher one.

utilities (``odesde.utils``) < mathematics (``odesde`` and its other modules) < studies
(``odesde.studies``) < companion machinery (``odesde.companion``). Every import statement of
every module is read, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ("utilities", "mathematics", "studies", "companion")


def layer_of(module: str) -> str | None:
    """The layer of an ``odesde`` module name; ``None`` outside the package."""
    parts = module.split(".")
    if parts[0] != "odesde":
        return None
    sub = parts[1] if len(parts) > 1 else ""
    return {"utils": "utilities", "studies": "studies", "companion": "companion"}.get(
        sub, "mathematics")


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, src: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``; ``from a import b`` yields
    ``a.b`` (``b`` may be a module)."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            found += [(node.lineno, f"{origin}.{alias.name}") for alias in node.names]
    return found


def layer_violations(src: Path) -> list[str]:
    """Every import of a higher layer by a lower one under ``src/odesde``."""
    out = []
    for path in sorted((src / "odesde").rglob("*.py")):
        here = layer_of(module_name(path, src))
        for line, target in imported_modules(path, src):
            there = layer_of(target)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                out.append(f"{path.relative_to(src)}:{line}: the {here} layer imports {target} "
                           f"({there})")
    return out


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations(SRC) == []


def test_the_rule_is_enforced_on_a_violating_tree(tmp_path):
    for folder in ("odesde", "odesde/utils", "odesde/studies", "odesde/companion"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "odesde" / "sde.py").write_text("from .utils import files\n")
    (tmp_path / "odesde" / "utils" / "files.py").write_text(
        "def f():\n    from .. import sde\n")  # inside a function: still an import
    (tmp_path / "odesde" / "studies" / "chapter.py").write_text(
        "from ..companion.checks import Checks\nimport odesde.sde\n")
    (tmp_path / "odesde" / "companion" / "checks.py").write_text("from ..studies import chapter\n")
    found = layer_violations(tmp_path)
    assert len(found) == 2, found
    assert "odesde/utils/files.py:2: the utilities layer imports odesde.sde" in found[1]
    assert "odesde/studies/chapter.py:1: the studies layer imports odesde.companion.checks" in found[0]


@pytest.mark.parametrize("module, layer", [
    ("odesde", "mathematics"), ("odesde.gaussian.tables", "mathematics"),
    ("odesde.utils.files", "utilities"), ("odesde.studies.score_fpe", "studies"),
    ("odesde.companion.cli", "companion"), ("numpy", None),
])
def test_layer_of(module, layer):
    assert layer_of(module) == layer


def test_every_module_is_listed_in_the_package_readme():
    readme = (SRC / "odesde" / "README.md").read_text()
    missing = [module_name(p, SRC) for p in sorted((SRC / "odesde").rglob("*.py"))
               if p.name != "__init__.py" and f"`{p.stem}`" not in readme]
    assert missing == []
