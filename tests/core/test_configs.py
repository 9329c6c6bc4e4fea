from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import pytest

from rtk.config.fields import ConfigValueError, build_config, describe, option, parse_number


@dataclass
class Example:
    eps: float = option(8 / 255, min=0.0, help="radius")
    steps: int = option(20, min=0, max=1000, help="steps")
    norm: Literal["Linf", "L2"] = option("Linf", help="norm")
    classes: list[int] | None = option(None, help="classes")
    alpha: float | None = option(None, help="step")
    name: str = option("x", help="a name")


def test_fractions_are_exact():
    assert parse_number("8/255") == float(Fraction(8, 255))
    assert build_config(Example, {"eps": "8/255"}).eps == 8 / 255
    assert build_config(Example, {"eps": "1e-3"}).eps == 1e-3


@pytest.mark.parametrize("table, key, fragment", [
    ({"epz": 1.0}, "epz", "valid keys: eps, steps, norm, classes, alpha, name"),
    ({"steps": 2.5}, "steps", "expected an integer"),
    ({"steps": True}, "steps", "expected an integer"),
    ({"eps": "abc"}, "eps", "fraction"),
    ({"eps": "1/0"}, "eps", "fraction"),
    ({"eps": -0.1}, "eps", "at least 0.0"),
    ({"steps": 10**9}, "steps", "at most 1000"),
    ({"norm": "L3"}, "norm", '"Linf" | "L2"'),
    ({"classes": [1, "a"]}, "classes", "expected an integer"),
    ({"classes": 3}, "classes", "expected"),
    ({"name": 3}, "name", "expected a string"),
    ({"eps": float("nan")}, "eps", "finite"),
])
def test_errors_name_the_key(table, key, fragment):
    with pytest.raises(ConfigValueError) as info:
        build_config(Example, table)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_optional_and_lists():
    cfg = build_config(Example, {"classes": [5, 6], "alpha": "none"})
    assert cfg.classes == [5, 6] and cfg.alpha is None
    assert build_config(Example, {"alpha": 0.5}).alpha == 0.5


def test_required_field_is_reported():
    @dataclass
    class Needs:
        root: str = option(help="folder")

    with pytest.raises(ConfigValueError, match='missing required key "root"'):
        build_config(Needs, {})


def test_describe_lists_defaults_and_help():
    rows = {r["name"]: r for r in describe(Example)}
    assert rows["steps"]["default"] == 20 and rows["steps"]["max"] == 1000 and rows["steps"]["help"] == "steps"
    assert rows["norm"]["type"] == '"Linf" | "L2"'
    assert rows["classes"]["type"] == "list[int] | none"
