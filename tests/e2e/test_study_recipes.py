"""The study's recipes (recipes/study_table{2,3,4,5}.toml; Vaishnavi, Eykholt, Rahmati, TMLR 2024):
every one validates as shipped (its ImageNet sources are imports) and under each profile, carries the
paper's numbers, and runs end to end under its smoke profiles."""
from __future__ import annotations

import json
import tomllib

import pytest

from rtk.config.recipe import load_recipe, paper_for
from tests.helpers import REPO

RECIPES = sorted((REPO / "recipes").glob("study_table*.toml"))
SMOKE = [(path, profile) for path in RECIPES for profile in load_recipe(path).profiles if profile.startswith("smoke")]


def test_the_four_tables_are_there():
    assert [p.name for p in RECIPES] == [f"study_table{i}.toml" for i in (2, 3, 4, 5)]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_validates_in_place_under_every_profile(cli, path):
    """The study's ImageNet sources are imports (published checkpoints), checked without a download."""
    recipe = load_recipe(path)
    for profile in [None, *recipe.profiles]:
        result = cli("validate", path, *(("--profile", profile) if profile else ()))
        assert result.exit_code == 0, f"--profile {profile}: {result.output}{result.stderr}"
    assert "smoke" in recipe.profiles


@pytest.mark.parametrize("path, profile", SMOKE, ids=lambda v: getattr(v, "stem", v))
def test_smoke_profiles_validate_in_place_without_weights(cli, path, profile):
    result = cli("validate", path, "--profile", profile)
    assert result.exit_code == 0, result.output


def test_table2_numbers_reach_the_right_runs():
    recipe = load_recipe(REPO / "recipes" / "study_table2.toml")
    points = recipe.points()
    assert len(points) == 36
    found = {}
    for point in points:
        paper = paper_for(recipe, point.params)
        assert set(paper) == {"clean", "robust"}, point.id
        found[(point.params["target"]["dataset"], point.params["source"]["label"])] = paper
    assert found[("dtd", "random")] == {"clean": 0.543, "robust": 0.481}
    assert found[("flowers102", "AT")] == {"clean": 0.937, "robust": 0.901}
    assert found[("imagefolder", "SimCLR")] == {"clean": 0.604, "robust": 0.444}  # Birdsnap
    # the labels name the sources they stand for, so a row cannot reach the wrong checkpoint
    imports = {point.params["source"]["label"]: point.params["source"].get("import", {}) for point in points}
    assert imports["AT"]["format"] == "madrylab-robustness" and "l2_eps0.5" in imports["AT"]["url"]
    assert imports["SimCLR"]["format"] == "simclr-converted" and imports["random"] == {}


def test_table3_numbers_are_certified_metrics():
    recipe = load_recipe(REPO / "recipes" / "study_table3.toml")
    papers = [paper_for(recipe, p.params) for p in recipe.points()]
    assert len(papers) == 36
    assert all(set(p) == {"clean_smoothed_accuracy", "certified_accuracy@0.5", "acr"} for p in papers)
    cifar10_cr = [paper_for(recipe, p.params) for p in recipe.points()
                  if p.params["target"]["dataset"] == "cifar10" and p.params["source"]["label"] == "CR"]
    assert cifar10_cr == [{"clean_smoothed_accuracy": 0.934, "certified_accuracy@0.5": 0.892, "acr": 1.601}]


@pytest.mark.parametrize("profile, keys", [
    (None, {"clean", "robust"}), ("certified", {"clean_smoothed_accuracy", "certified_accuracy@0.5", "acr"})])
def test_table4_rows_follow_the_fine_tuning_objective(profile, keys):
    recipe = load_recipe(REPO / "recipes" / "study_table4.toml", profile)
    papers = [paper_for(recipe, p.params) for p in recipe.points()]
    assert len(papers) == 6 and all(set(p) == keys for p in papers)
    assert len({tuple(sorted(p.items())) for p in papers}) == 6  # each run its own row


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_run_ids_name_sources_by_their_label(path):
    """Every swept source carries a distinct label, so no run id falls back to a "#1" suffix."""
    for profile in [None, *load_recipe(path).profiles]:
        recipe = load_recipe(path, profile)
        points = recipe.points()
        assert not any("#" in p.id for p in points), (profile, [p.id for p in points])
        for point in points:
            if "source" in point.params:
                assert f"source={point.params['source']['label']}" in point.id
            if "target" in point.params and point.params["target"]["dataset"] != "digits":
                assert paper_for(recipe, point.params), f"{profile}: no paper row for {point.id}"


def test_the_study_settings_are_the_papers():
    t2 = tomllib.loads((REPO / "recipes" / "study_table2.toml").read_text())
    assert t2["transfer"]["objective"] == {"name": "pgd-at", "norm": "L2", "eps": 0.5, "steps": 3, "alpha": "1/3",
                                                "random_start": True}
    attacks = [(a["name"], a["norm"], a["eps"]) for a in t2["eval"]["attacks"]]
    assert attacks == [("apgd-ce", "L2", 0.5), ("square", "L2", 0.5)]
    assert t2["eval"]["attacks"][0]["restarts"] == 5  # AutoAttack's constructor default, kept by version "custom"
    t3 = tomllib.loads((REPO / "recipes" / "study_table3.toml").read_text())
    objective = {k: t3["transfer"]["objective"][k] for k in ("sigma", "m", "lam", "eta")}
    assert objective == {"sigma": 0.5, "m": 2, "lam": 5.0, "eta": 0.5}
    transfer = t3["transfer"]
    assert (transfer["lr"], transfer["epochs"], transfer["batch_size"]) == (0.01, 150, 64)
    assert transfer["milestones"] == [50, 100]
    assert (t3["certify"]["sigma"], t3["eval"]["n"], t3["eval"]["subset"]) == (0.5, 500, "stride")
    for table in (t2, t3):  # the study's code: RandomResizedCrop(224) + flip for training, CIFAR read at 224 px
        # The torchvision tasks augment as they read (the study's transforms); CIFAR is augmented by the strategy.
        assert table["transfer"]["augment"] == "none"
        cases = table["sweep"]["cases"]
        cifar = [c for c in cases if c["target"]["dataset"].startswith("cifar")]
        assert len(cifar) == 2 and all(c["target"]["image_size"] == 224 for c in cifar)
        assert all(c.get("transfer.augment") == "resized-crop-flip" for c in cifar)
    t5 = tomllib.loads((REPO / "recipes" / "study_table5.toml").read_text())
    assert t5["transfer"]["strategy"] == "linear-probe" and t5["certify"]["sigma"] == 0.5


@pytest.mark.parametrize("path, profile", SMOKE, ids=lambda v: getattr(v, "stem", v))
def test_smoke_profile_runs_end_to_end(cli, tmp_path, one_thread, path, profile):
    out = tmp_path / "out"
    result = cli("run", path, "--profile", profile, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    recipe = load_recipe(path, profile)
    assert payload["complete"] is True and len(payload["runs"]) == len(recipe.points())
    raw = recipe.raw
    for run in payload["runs"]:
        assert 0 <= run["metrics"]["clean"] <= 1
        if raw.get("eval", {}).get("attacks"):
            assert {"apgd-ce", "square"} <= set(run["metrics"])
            assert 0 <= run["metrics"]["robust"] <= run["metrics"]["clean"]
        else:  # no attack, no robust column
            assert "robust" not in run["metrics"]
        if "certify" in raw:
            certify = run["certify"]
            assert certify["n"] == raw["certify"]["max_examples"] and certify["sigma"] == raw["certify"]["sigma"]
            assert {"certified_accuracy@0.5", "acr", "clean_smoothed_accuracy"} <= set(certify["metrics"])
            assert (out / certify["tsv"]).is_file()
