"""Notebook parameters: declared once in the ``parameters`` cell, validated before any run.

A notebook declares each parameter as an annotated assignment, with its allowed values at the
start of the trailing comment and a description after them::

    seed: int = 0                      # [0, 2**31-1] root of every jax.random key
    n_points: int = 1000               # [2, 100000] grid points of every scheme
    spectrum: str = "cifar10-2024"     # {"cifar10-2024", "cifar10-2025"} data spectrum
    eps_values: list[float] = [0.0]    # [0, 0.5] truncation times (each element)
    heun_points: str = "as_published"  # {"as_published", "corrected"} Heun NFE convention

Types are ``int``, ``float``, ``bool``, ``str`` and ``list[...]`` of the first four. A range
``[lo, hi]`` (``(`` or ``)`` for open ends, ``inf`` allowed) bounds numbers, and every element
of a list; a set ``{...}`` lists the allowed choices. Papermill injects the values of a run in
a cell after this one, so the notebook itself stays a plain, runnable notebook.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import math
import re
import tokenize
from pathlib import Path
from typing import Any

import nbformat

SCALAR_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_RANGE = re.compile(r"^\s*([\[(])\s*([^,\]\)]+?)\s*,\s*([^,\]\)]+?)\s*([\])])")


class ParameterError(ValueError):
    """A notebook, profile or command line gives a parameter the notebook does not allow."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One declared notebook parameter."""

    name: str
    type: str  # "int", "float", "bool", "str", or "list[<scalar>]"
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    doc: str = ""

    @property
    def element_type(self) -> str:
        return self.type[5:-1] if self.type.startswith("list[") else self.type

    def allowed(self) -> str:
        """What this parameter accepts, in words."""
        kind = f"a list of {self.element_type}" if self.type.startswith("list[") else self.type
        if self.choices is not None:
            return f"{kind} among {{{', '.join(repr(c) for c in self.choices)}}}"
        if self.low is not None or self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            return f"{kind} in {lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"
        return kind

    def validate(self, value: Any, *, notebook: str) -> Any:
        """Returns ``value`` converted to this parameter's type, or raises ParameterError."""

        def fail(bad, why=""):
            raise ParameterError(
                f"notebook {notebook!r}, parameter {self.name!r}: bad value {bad!r}{why}; "
                f"allowed: {self.allowed()}"
            )

        if self.type.startswith("list["):
            if not isinstance(value, (list, tuple)):
                fail(value, " (not a list)")
            return [self._validate_scalar(v, fail) for v in value]
        return self._validate_scalar(value, fail)

    def _validate_scalar(self, value, fail):
        kind = self.element_type
        if kind == "bool":
            if not isinstance(value, bool):
                fail(value, " (not a bool)")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                fail(value, " (not an int)")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(value, " (not a number)")
            value = float(value)
            if math.isnan(value):
                fail(value, " (NaN)")
        elif kind == "str":
            if not isinstance(value, str):
                fail(value, " (not a string)")
        if self.choices is not None and value not in self.choices:
            fail(value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            fail(value)
        if self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        ):
            fail(value)
        return value


def _fmt(x):
    if x is None:
        return "inf"
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _number(text: str, *, where: str) -> float | None:
    text = text.strip()
    if text in ("inf", "+inf", "-inf"):  # an open end
        return None
    try:
        return float(eval(compile(ast.parse(text, mode="eval"), where, "eval"), {"__builtins__": {}}))
    except Exception as err:  # noqa: BLE001 - any bad bound is a declaration error
        raise ParameterError(f"{where}: cannot read the bound {text!r} ({err})") from None


def _annotation(node: ast.expr, *, where: str) -> str:
    text = ast.unparse(node).replace(" ", "")
    if text in SCALAR_TYPES:
        return text
    match = re.fullmatch(r"list\[(int|float|bool|str)\]", text)
    if match:
        return text
    raise ParameterError(
        f"{where}: type {text!r} is not supported; use int, float, bool, str or list[...] of them"
    )


def parse_parameters_cell(source: str, *, notebook: str) -> dict[str, Parameter]:
    """Reads the declarations of a ``parameters`` cell (see the module docstring)."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].strip()
    params: dict[str, Parameter] = {}
    for node in ast.parse(source).body:
        where = f"notebook {notebook!r}, parameters cell line {node.lineno}"
        if isinstance(node, ast.Assign):
            names = ", ".join(ast.unparse(t) for t in node.targets)
            raise ParameterError(f"{where}: {names} has no type annotation (write `name: type = value`)")
        if not isinstance(node, ast.AnnAssign) or node.value is None:
            continue
        if not isinstance(node.target, ast.Name):
            raise ParameterError(f"{where}: only plain names can be parameters")
        name = node.target.id
        kind = _annotation(node.annotation, where=where)
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{where}: the default of {name!r} must be a literal") from None
        spec = dict(name=name, type=kind, default=default)
        comment = comments.get(node.end_lineno, "")
        if "=" in comment:
            # Papermill reads `name = value` lines of this cell and would misread the comment.
            raise ParameterError(f"{where}: the comment of {name!r} contains '=': rephrase it")
        if comment.startswith("{"):
            end = comment.index("}") + 1
            spec["choices"] = tuple(sorted(ast.literal_eval(comment[:end]), key=str))
            comment = comment[end:]
        elif (match := _RANGE.match(comment)) is not None:
            spec["low"] = _number(match.group(2), where=where)
            spec["high"] = _number(match.group(3), where=where)
            spec["low_open"] = match.group(1) == "("
            spec["high_open"] = match.group(4) == ")"
            comment = comment[match.end():]
        param = Parameter(**spec, doc=comment.strip())
        param.validate(default, notebook=notebook)  # the declaration must admit its default
        params[name] = param
    return params


def parameters_cell(nb: nbformat.NotebookNode) -> tuple[int, str]:
    """Index and source of the cell tagged ``parameters``."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return index, cell.source
    raise ParameterError("no code cell is tagged 'parameters'")


def declared_parameters(path: Path) -> dict[str, Parameter]:
    """The parameters a notebook declares."""
    nb = nbformat.read(path, as_version=4)
    try:
        _, source = parameters_cell(nb)
    except ParameterError as err:
        raise ParameterError(f"notebook {path.stem!r}: {err}") from None
    return parse_parameters_cell(source, notebook=path.stem)


def resolve(
    declared: dict[str, Parameter], overrides: dict[str, Any], *, notebook: str
) -> dict[str, Any]:
    """Defaults updated by ``overrides``, every value validated."""
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ParameterError(
            f"notebook {notebook!r}: unknown parameter {unknown[0]!r}; "
            f"declared: {', '.join(sorted(declared)) or 'none'}"
        )
    values = {name: p.default for name, p in declared.items()}
    values.update(overrides)
    return {name: declared[name].validate(v, notebook=notebook) for name, v in values.items()}
