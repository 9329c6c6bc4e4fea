"""Hostile recipes: whatever a recipe, --set or --profile holds, rtk answers with a valid result
or one line and exit code 2, never a traceback or an "internal error" (exit 1)."""
from __future__ import annotations

import copy
import tempfile
import tomllib
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtk.cli import cli as group
from tests.helpers import TINY_RECIPE

BASE = tomllib.loads(TINY_RECIPE)
BASE["profile"] = {"smoke": {"source.train.epochs": 1, "eval": {"n": 10}}}


def _paths(node, prefix=()):
    """Every dotted path into the base recipe (tables, list items and values)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


PATHS = [p for p in _paths(BASE) if p[0] != "profile"]

nasty_floats = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324, -0.0, -1.0, -3e-3])
nasty_ints = st.sampled_from([-1, 0, 10**12, -(10**12), 10**30, 2**63, 2**64, -(2**63) - 1, 10**300])
nasty_strings = st.sampled_from(["nan", "inf", "-inf", "1e400", "8/0", "1/3", "", " ", "none", "None", "cuda:99",
                                 "\x00", "é", "../../etc", "a\nb", "{", "small-cnn\n", "[1,2]", "8/255", "0x10"])
scalars = st.one_of(nasty_floats, nasty_ints, nasty_strings, st.booleans(), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)), max_leaves=6)
keys = st.one_of(st.sampled_from(["model", "dataset", "name", "eps", "steps", "epochs", "lr", "n", "seed", "extra",
                                  "weights", "num_classes", "label", "attacks", "strategy"]),
                 st.text(min_size=1, max_size=8))


def _nested(kind: str, depth: int) -> str:
    return ("{a = " * depth + "1" + "}" * depth) if kind == "table" else ("[" * depth + "1" + "]" * depth)


@st.composite
def mutated(draw):
    """(recipe bytes, extra CLI arguments) derived from the tiny recipe by a few hostile edits."""
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "set", "delete", "unknown", "top", "sweep", "paper"]))
        path = draw(st.sampled_from(PATHS))
        parent = raw
        try:  # an earlier edit may have replaced or removed part of the path: then skip this one
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, list):
                parent[path[-1]]  # noqa: B018 - the index must exist
            if action == "set":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif action == "unknown" and isinstance(parent, dict):
                parent[draw(keys)] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue
        if action in ("set", "delete", "unknown"):
            continue
        if action == "top":
            raw[draw(st.sampled_from(["runs", "Source", "evaluation", "x"]))] = {"a": 1}
        elif action == "sweep":
            raw["sweep"] = draw(st.one_of(
                st.dictionaries(st.sampled_from([".".join(map(str, p)) for p in PATHS]
                                                + ["nope.key", "eval.attacks.9.eps", "run..seed", "", "sweep.x",
                                                   "eval.attacks.²"]),
                                st.one_of(st.lists(values, max_size=3), values), max_size=2),
                values))
        elif action == "paper":
            raw["paper"] = draw(st.one_of(values, st.fixed_dictionaries({"rows": values})))
    try:
        text = tomli_w.dumps(raw)
    except (TypeError, ValueError):  # a drawn key or value TOML cannot hold: test the text edits instead
        text = TINY_RECIPE
    data = text.encode()
    edit = draw(st.sampled_from(["none"] * 4 + ["truncate", "bytes", "latin1", "deep", "garbage"]))
    if edit == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif edit == "latin1":
        data = data.replace(b'"tiny"', '"tïny"'.encode("latin-1"))
    elif edit == "deep":
        nested = _nested(draw(st.sampled_from(["table", "array"])), draw(st.sampled_from([50, 400, 1000, 5000])))
        data += f"\n[certify]\nx = {nested}\n".encode()
    elif edit == "garbage":
        data = draw(st.binary(max_size=200))
    args = []
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.one_of(st.sampled_from([".".join(map(str, p)) for p in PATHS]
                                             + ["", ".", "x", "profile.smoke.x", "eval.attacks.5.eps", "sweep.run.seed",
                                                "run.seed.x", "eval.attacks.٣"]),
                             st.text(max_size=10)))
        value = draw(st.one_of(st.sampled_from(["1e400", "nan", "inf", "[", "{a=", "1" * 5000, "[[[[", "8/255",
                                                "10**30", _nested("array", 3000), _nested("table", 600), "-1", "true",
                                                ""]),
                               st.text(max_size=10)))
        sep = draw(st.sampled_from(["=", "=", ""]))
        args += ["--set", f"{key}{sep}{value}"]
    if draw(st.booleans()):
        args += ["--profile", draw(st.sampled_from(["smoke", "nope", "", "SMOKE"]))]
    return data, args


def _invoke(*args):
    return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_or_ok(result):
    output = result.output
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {output}"
    assert "Traceback" not in output and "internal error" not in output, output
    if result.exit_code == 2:  # `run` prints its "rtk: N run(s) ..." banner first
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_validate_never_fails_with_a_traceback(case):
    data, args = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.toml"
        path.write_bytes(data)
        assert_one_line_or_ok(_invoke("validate", path, *args))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_run_of_an_invalid_recipe_writes_nothing(case):
    data, args = case
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "recipe.toml", Path(tmp) / "out"
        path.write_bytes(data)
        if _invoke("validate", path, *args).exit_code == 0:
            return  # a valid recipe would train; the runner's own tests cover those
        result = _invoke("run", path, "--out", out, "--quiet", *args)
        assert_one_line_or_ok(result)
        assert result.exit_code == 2
        assert not out.exists()


@pytest.mark.parametrize("text, expected", [
    (TINY_RECIPE.replace("lr = 3e-3", "lr = 1" + "0" * 400), "integer too large for a float"),
    (TINY_RECIPE.replace("lr = 3e-3", 'lr = "1e400"'), "too large for a float"),
    (TINY_RECIPE.replace("lr = 3e-3", "lr = nan"), "expected a finite number"),
    (TINY_RECIPE.replace("epochs = 2", "epochs = 1" + "0" * 4400), "invalid TOML"),
    (TINY_RECIPE.replace("epochs = 2", "epochs = 1000000000000"), "[source.train] epochs: must be at most 100000"),
    (TINY_RECIPE.replace("seed = 0", "seed = -1"), "[run] seed: must be at least 0"),
    (TINY_RECIPE.replace('name = "tiny"\n', "") .replace("[run]", "run = 5\n[runx]"), "unknown table [runx]"),
    ("run = 5\n[source]\nmodel = 'small-cnn'\n", "[run] must be a table, got int"),
    ("[run]\nx = " + _nested("table", 1000) + "\n", "nested too deeply"),
    ("[run]\nx = " + _nested("array", 1000) + "\n", "nested too deeply"),
    (TINY_RECIPE + "\n[paper]\nx = " + _nested("array", 300) + "\n", "nested more than 32 levels deep"),
    (TINY_RECIPE + "\n[sweep]\n'eval.attacks.²' = [1]\n", "needs an index"),
    (TINY_RECIPE + "\n[sweep]\n'run.seed' = [" + ",".join(map(str, range(200))) + "]\n'eval.n' = ["
     + ",".join(map(str, range(1, 200))) + "]\n", "expands to 39800 runs, more than 10000"),
])
def test_known_hostile_recipes_give_one_line(write_recipe, text, expected):
    result = _invoke("validate", write_recipe(text))
    assert_one_line_or_ok(result)
    assert result.exit_code == 2 and expected in result.stderr


def test_non_utf8_recipe_names_the_byte(tmp_path):
    path = tmp_path / "r.toml"
    path.write_bytes(TINY_RECIPE.replace('"tiny"', '"tïny"').encode("latin-1"))
    result = _invoke("validate", path)
    assert result.exit_code == 2 and "not valid UTF-8" in result.stderr


@pytest.mark.parametrize("override, expected", [
    ("run.x=" + _nested("array", 3000), "nested too deeply"),
    ("eval.attacks.٣.eps=1", "needs an index"),
    ("source.train.lr=" + "1" * 5000, "--set value"),
    ("eval.batch_size=10000000", "must be at most 1000000"),
    ("paper.x=" + _nested("array", 40), "nested more than 32 levels deep"),
])
def test_hostile_overrides_give_one_line(tiny_recipe, override, expected):
    result = _invoke("validate", tiny_recipe, "--set", override)
    assert_one_line_or_ok(result)
    assert result.exit_code == 2 and expected in result.stderr
