"""[run] seeds / --seeds: every sweep point repeated per seed, sources included; errors are one line."""
import pytest

from rtk.config.recipe import load_recipe
from rtk.config.source_key import source_key
from rtk.config.spec import resolve
from rtk.errors import RecipeError
from rtk.registry import default_registry
from tests.helpers import TINY_RECIPE

SWEPT = TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.01, 0.1]\n'


def specs(path, overrides=()):
    return resolve(load_recipe(path, None, list(overrides)), default_registry())


def test_seeds_repeat_every_point_innermost(write_recipe):
    found = specs(write_recipe(SWEPT), ["run.seeds=[0, 1, 2]"])
    assert [s.id for s in found] == ["lr=0.01,seed=0", "lr=0.01,seed=1", "lr=0.01,seed=2",
                                     "lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.1,seed=2"]
    assert [s.group for s in found] == ["lr=0.01"] * 3 + ["lr=0.1"] * 3
    assert [s.run.seed for s in found] == [0, 1, 2, 0, 1, 2]
    assert found[1].params == {"transfer.lr": 0.01, "run.seed": 1}


def test_sources_are_trained_once_per_seed(write_recipe):
    found = specs(write_recipe(TINY_RECIPE), ["run.seeds=[3, 4]"])
    assert [s.id for s in found] == ["seed=3", "seed=4"] and {s.group for s in found} == {"tiny"}
    keys = [source_key(s.source) for s in found]
    assert keys[0] != keys[1]
    # seed 3 from --seeds is the same source as a plain run with seed 3: the store shares it
    plain = specs(write_recipe(TINY_RECIPE.replace("seed = 0", "seed = 3"), "plain.toml"))[0]
    assert source_key(plain.source) == keys[0] and plain.group is None


def test_a_selected_source_follows_the_seed(write_recipe, tmp_path):
    write_recipe(TINY_RECIPE, "defines.toml")
    selects = TINY_RECIPE.split("[source]")[0] + '[source]\nrecipe = "defines.toml"\n' + \
        "\n[target]" + TINY_RECIPE.split("[target]")[1]
    path = write_recipe(selects, "selects.toml")
    one = specs(path)[0]
    assert one.source.seed == 0
    seeded = specs(path, ["run.seeds=[0, 5]"])
    assert [s.source.seed for s in seeded] == [0, 5]
    assert source_key(seeded[0].source) == source_key(one.source)


@pytest.mark.parametrize("value, message", [
    ("[]", "non-empty list"), ("[1, 1]", "repeated"), ("[-1]", "0..2147483647"), ('["a"]', "integers"),
    ("3", "non-empty list"),
])
def test_bad_seeds_are_one_line_errors(write_recipe, value, message):
    with pytest.raises(RecipeError, match=message):
        specs(write_recipe(TINY_RECIPE), [f"run.seeds={value}"])


def test_seeds_and_a_swept_seed_conflict(write_recipe):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"run.seed" = [0, 1]\n')
    with pytest.raises(RecipeError, match="keep one of them"):
        specs(path, ["run.seeds=[0, 1]"])


def test_cli_seeds_option(cli, write_recipe):
    path = write_recipe(TINY_RECIPE)
    result = cli("run", path, "--seeds", "0,x", "--dry-run")
    assert result.exit_code == 2 and "--seeds" in result.stderr
    result = cli("run", path, "--seeds", "1-3", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("TRAIN here") == 3
