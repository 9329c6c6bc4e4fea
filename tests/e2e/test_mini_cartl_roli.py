"""The CPU-scale reproductions of CARTL (Chen et al., arXiv:2106.06667: NEFT keeps more transferred
robustness than plain fine-tuning of the same blocks; here at eps 0.2 only) and RoLI (Hua et
al., arXiv:2312.05716: a robust linear head start beats a random one) in
recipes/mini/{cartl_neft,roli_head}.toml: both
recipes validate and compare like with like (fast); each slow test runs one recipe end to end
on real MNIST and asserts its finding.

Margins are set from one measured run each (numbers in the recipes' comments): about half the
measured gap, which a method that made no difference could not meet.
"""
from __future__ import annotations

import dataclasses

import pytest

from rtk.config.recipe import load_recipe
from rtk.registry import default_registry
from rtk.config.spec import resolve
from rtk_plugins.roli import RanLIConfig
from tests.helpers import REPO, run_on_mnist

MINI = REPO / "recipes" / "mini"
CARTL, ROLI = MINI / "cartl_neft.toml", MINI / "roli_head.toml"
# What both CARTL runs must share, so only NEFT (spectral bound, convex residual, head init) differs.
SHARED_FINETUNING = ("k", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                     "milestones", "gamma", "warmup_epochs", "augment", "bn_affine_trainable")


@pytest.mark.parametrize("profile", [None, "smoke"])
@pytest.mark.parametrize("path", [CARTL, ROLI], ids=lambda p: p.stem)
def test_mini_recipe_validates(cli, path, profile):
    result = cli("validate", path, *(["--profile", profile] if profile else []))
    assert result.exit_code == 0, result.stderr


def specs(path, profile=None) -> dict:
    return {spec.id: spec for spec in resolve(load_recipe(path, profile), default_registry())}


@pytest.mark.parametrize("profile", [None, "smoke"])
def test_cartl_recipe_compares_neft_with_plain_finetuning_of_the_same_blocks(profile):
    runs = specs(CARTL, profile)
    assert set(runs) == {"plain-ft", "neft"}
    plain, neft = runs["plain-ft"], runs["neft"]
    assert plain.raw["source"] == neft.raw["source"]  # one source, trained once
    assert plain.source.objective.component.name == "cartl-fdm"  # CARTL pairs its source with NEFT
    assert plain.transfer.component.name == "retrain-last-k" and neft.transfer.component.name == "neft"
    assert plain.transfer.config.reinit is False  # fine-tuned from the source weights, as NEFT is
    if profile is None:
        # the regularised feature is the frozen part's output
        assert plain.source.objective.config.k == neft.transfer.config.k
        for name in SHARED_FINETUNING:
            assert getattr(plain.transfer.config, name) == getattr(neft.transfer.config, name), name


@pytest.mark.parametrize("profile", [None, "smoke"])
def test_roli_recipe_differs_from_ranli_only_in_the_starting_head(profile):
    runs = specs(ROLI, profile)
    assert set(runs) == {"ranli", "roli"}
    ranli, roli = runs["ranli"], runs["roli"]
    assert ranli.raw["source"] == roli.raw["source"] and ranli.raw["target"] == roli.raw["target"]
    assert (ranli.transfer.component.name, roli.transfer.component.name) == ("ranli", "roli")
    for field in dataclasses.fields(RanLIConfig):  # the same adversarial fine-tuning
        assert getattr(ranli.transfer.config, field.name) == getattr(roli.transfer.config, field.name), field.name


def test_smoke_profiles_are_small():
    for path in (CARTL, ROLI):
        for spec in specs(path, "smoke").values():
            assert spec.eval.n <= 100 and spec.source.train.epochs <= 1 and spec.source.data.config.per_class <= 100
            assert spec.target.config.per_class <= 100 and spec.transfer.config.epochs <= 1
            assert all(a.config.steps <= 5 for a in spec.attacks)


def run_mini(path, out) -> dict[str, dict[str, float]]:
    """Run a recipe as shipped on MNIST; metrics by sweep-point id."""
    return {run["id"]: run["metrics"] for run in run_on_mnist(path, out)}


@pytest.mark.slow
def test_neft_keeps_more_eps02_robustness_than_plain_finetuning(tmp_path, one_thread):
    # CARTL's finding holds here at eps 0.2 only: at the source's eps 0.3 both transfers lose
    # nearly all robustness (see the recipe's comment), which is pinned too.
    runs = run_mini(CARTL, tmp_path)
    plain, neft = runs["plain-ft"], runs["neft"]
    assert plain["clean"] > 0.9 and neft["clean"] > 0.75  # measured 0.983 and 0.875 / 0.883
    assert plain["PGD-20-eps0.2"] >= 0.1  # plain fine-tuning keeps some (0.235 / 0.322; a natural model: 0.000)
    # Two runs measured gaps of 0.16 (0.398 vs 0.235) and 0.09 (0.410 vs 0.322): 0.05 is above
    # the ~0.03 noise of 1,000 images, which a NEFT that constrained nothing would stay within.
    assert neft["PGD-20-eps0.2"] >= plain["PGD-20-eps0.2"] + 0.05
    assert max(plain["PGD-20"], neft["PGD-20"]) <= 0.1  # eps 0.3: both lose it (0.013-0.020 / 0.024-0.027)


@pytest.mark.slow
def test_robust_head_start_beats_a_random_head(tmp_path, one_thread):
    runs = run_mini(ROLI, tmp_path)
    ranli, roli = runs["ranli"], runs["roli"]
    assert ranli["clean"] > 0.7 and roli["clean"] > 0.7  # measured 0.817 / 0.844 and 0.870 / 0.875
    assert ranli["PGD-20"] >= 0.1  # adversarial fine-tuning from a random head still learns some robustness (0.219)
    assert roli["PGD-20"] >= ranli["PGD-20"] + 0.07  # half the measured gap (0.355 vs 0.219; re-run 0.360 vs 0.217)
