"""The Shafahi et al. (arXiv:1905.08232) recipes: each validates as written and under its smoke
profile; its paper numbers attach to the sweep points they belong to; the smoke profile runs end
to end (seconds each, so in the fast suite)."""
from __future__ import annotations

import json

import pytest

from tests.helpers import REPO

RECIPES = sorted((REPO / "recipes").glob("shafahi_*.toml"))
NAMES = [p.stem for p in RECIPES]
# sweep points that carry paper numbers (clean / PGD-20 / CW-20), per recipe
PAPER_POINTS = {"shafahi_table1": 4, "shafahi_table2": 8, "shafahi_table3": 4, "shafahi_table4": 6,
                "shafahi_table5": 5, "shafahi_table6": 4, "shafahi_table7": 7, "shafahi_fig1": 34,
                "shafahi_fig3": 0, "shafahi_fig4": 6}


def test_every_table_and_figure_has_a_recipe():
    assert set(NAMES) == set(PAPER_POINTS)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_with_and_without_smoke(cli, name):
    recipe = REPO / "recipes" / f"{name}.toml"
    smoke = cli("validate", recipe, "--profile", "smoke")
    assert smoke.exit_code == 0, smoke.output + smoke.stderr
    full = cli("validate", recipe)  # no weights files: CIFAR sources come from shafahi_table1.toml or imports
    assert full.exit_code == 0, full.output + full.stderr


@pytest.mark.parametrize("name", NAMES)
def test_paper_numbers_attach_to_their_sweep_points(tmp_path, name):
    from rtk.config.recipe import load_recipe, paper_for

    recipe = load_recipe(REPO / "recipes" / f"{name}.toml")
    points = recipe.points()
    numbers = [{k: v for k, v in paper_for(recipe, p.params, p.cases).items() if isinstance(v, float)}
               for p in points]
    assert sum(1 for n in numbers if n) == PAPER_POINTS[name]
    assert all(set(n) <= {"clean", "PGD-20", "CW-20"} for n in numbers)
    labels = {a.get("label") for a in recipe.raw["eval"]["attacks"]}
    assert all(set(n) - {"clean"} <= labels for n in numbers)  # every paper column is one we measure
    smoke = load_recipe(REPO / "recipes" / f"{name}.toml", profile="smoke")
    assert len(smoke.points()) <= 4  # smoke stays small


def test_table1_cases_evaluate_each_source_on_its_own_dataset(tmp_path):
    from rtk.config.recipe import load_recipe

    points = load_recipe(REPO / "recipes" / "shafahi_table1.toml").points()
    assert len(points) == 6 and all("transfer" not in p.raw for p in points)
    assert all(p.raw["source"]["data"] == p.raw["target"] for p in points)
    # The other Shafahi recipes select these by objective and case id.
    assert [(p.raw["source"]["objective"]["name"], p.raw["target"]["dataset"], "classes" in p.raw["target"])
            for p in points] == [(o, d, h) for o in ("natural", "pgd-at")
                                 for d, h in (("cifar10", False), ("cifar100", False), ("cifar100", True))]


def test_table2_runs_only_the_papers_cells(tmp_path):
    from rtk.config.recipe import load_recipe, paper_for

    recipe = load_recipe(REPO / "recipes" / "shafahi_table2.toml")
    points = recipe.points()
    assert len(points) == 8 and all("clean" in paper_for(recipe, p.params, p.cases) for p in points)
    assert all(p.raw["source"]["recipe"] == "shafahi_table1.toml" for p in points)
    pairs = {(json.dumps(p.raw["source"]["where"], sort_keys=True), str(p.raw["target"])) for p in points}
    assert len(pairs) == 8
    for p in points:  # each source meets the target its cell names: half sources only split targets
        half_source = p.raw["source"]["where"]["case"] == "cifar100half"
        assert half_source == ("classes" in p.raw["target"])


@pytest.mark.parametrize("name", NAMES)
def test_smoke_profile_runs_end_to_end(cli, tmp_path, one_thread, name):
    from rtk.services.plots import plot_run

    out = tmp_path / "run"
    result = cli("run", REPO / "recipes" / f"{name}.toml", "--profile", "smoke", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] and payload["runs"]
    for run in payload["runs"]:
        assert {"clean", "robust"} <= set(run["metrics"]) and run["n_eval"] == 20
    swept = any(run["params"] for run in payload["runs"])
    plot = out / "plot.png"
    if swept and not plot.exists():  # until the runner calls plot_run itself
        assert plot_run(out) == plot
    assert plot.exists() == swept
