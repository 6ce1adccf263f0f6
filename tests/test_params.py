"""The parameters-cell convention: declarations, validation, messages."""

import math

import pytest
from hypothesis import given, strategies as st

from odesde.companion.params import ParameterError, parse_parameters_cell, resolve

CELL = """\
seed: int = 0  # [0, 2**31-1] root of every key
eps: float = 1e-3  # (0, 0.5] truncation time
scheme: str = "em"  # {"em", "ei", "heun"} which sampler
grid: list[int] = [50, 250]  # [2, 100000] grid points
plot: bool = True
"""


@pytest.fixture
def declared():
    return parse_parameters_cell(CELL, notebook="nb")


def test_declarations_are_read(declared):
    assert list(declared) == ["seed", "eps", "scheme", "grid", "plot"]
    assert declared["seed"].high == 2**31 - 1
    assert declared["eps"].low_open and not declared["eps"].high_open
    assert declared["scheme"].choices == ("ei", "em", "heun")
    assert declared["grid"].element_type == "int"
    assert declared["eps"].doc == "truncation time"
    assert declared["plot"].allowed() == "bool"


def test_defaults_resolve_unchanged(declared):
    assert resolve(declared, {}, notebook="nb") == {
        "seed": 0, "eps": 1e-3, "scheme": "em", "grid": [50, 250], "plot": True,
    }


def test_int_is_accepted_for_float():
    declared = parse_parameters_cell("x: float = 0.5  # [0, 10]\n", notebook="nb")
    value = resolve(declared, {"x": 3}, notebook="nb")["x"]
    assert value == 3.0 and isinstance(value, float)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sed": 1}, "notebook 'nb': unknown parameter 'sed'; declared: eps, grid, plot, scheme, seed"),
        ({"seed": 1.5}, "notebook 'nb', parameter 'seed': bad value 1.5 (not an int); allowed: int in [0, 2147483647]"),
        ({"seed": True}, "parameter 'seed': bad value True (not an int)"),
        ({"seed": -1}, "parameter 'seed': bad value -1; allowed: int in [0, 2147483647]"),
        ({"eps": 0.0}, "parameter 'eps': bad value 0.0; allowed: float in (0, 0.5]"),
        ({"eps": "small"}, "parameter 'eps': bad value 'small' (not a number)"),
        ({"eps": math.nan}, "parameter 'eps': bad value nan (NaN)"),
        ({"scheme": "rk5"}, "parameter 'scheme': bad value 'rk5'; allowed: str among {'ei', 'em', 'heun'}"),
        ({"grid": 50}, "parameter 'grid': bad value 50 (not a list); allowed: a list of int in [2, 100000]"),
        ({"grid": [50, 1]}, "parameter 'grid': bad value 1; allowed: a list of int in [2, 100000]"),
        ({"plot": "yes"}, "parameter 'plot': bad value 'yes' (not a bool)"),
    ],
)
def test_bad_values_name_notebook_parameter_value_and_allowed(declared, overrides, message):
    with pytest.raises(ParameterError) as info:
        resolve(declared, overrides, notebook="nb")
    assert message in str(info.value)


@pytest.mark.parametrize(
    "cell, message",
    [
        ("x = 1\n", "x has no type annotation"),
        ("x: dict = {}\n", "type 'dict' is not supported"),
        ("x: int = 5  # [0, 3]\n", "parameter 'x': bad value 5"),
        ("x: int = len('ab')\n", "the default of 'x' must be a literal"),
        ("x: int = 1  # [0, 3] with y = 2\n", "the comment of 'x' contains '='"),
    ],
)
def test_bad_declarations_are_reported(cell, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_parameters_cell(cell, notebook="nb")


@given(st.integers(min_value=-10, max_value=10), st.integers(min_value=-10, max_value=10),
       st.integers(min_value=-20, max_value=20))
def test_closed_range_accepts_exactly_its_interval(low, high, value):
    if low > high:
        low, high = high, low
    if not low <= 0 <= high:
        return  # the default must lie inside
    declared = parse_parameters_cell(f"x: int = 0  # [{low}, {high}]\n", notebook="nb")
    inside = low <= value <= high
    if inside:
        assert resolve(declared, {"x": value}, notebook="nb")["x"] == value
    else:
        with pytest.raises(ParameterError):
            resolve(declared, {"x": value}, notebook="nb")
