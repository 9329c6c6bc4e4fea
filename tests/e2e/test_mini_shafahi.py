"""The CPU-scale reproductions of Shafahi et al., "Adversarially robust transfer learning"
(ICLR 2020, arXiv:1905.08232) in recipes/mini/shafahi_*.toml: every recipe validates (fast),
and each slow test runs one recipe end to end on real MNIST and asserts its finding, or, for the
MLP-head finding that does not reproduce at this scale, what does hold.

Margins are set from one measured run each (numbers in recipes/mini/README.md): about half the
measured gap, which a method that transferred no robustness, or kept all of it, could not meet.
"""
from __future__ import annotations

import pytest

from rtk.config.recipe import load_recipe
from rtk.registry import default_registry
from rtk.config.spec import resolve
from tests.helpers import REPO, run_on_mnist

MINI = REPO / "recipes" / "mini"
RECIPES = {"frozen_features", "retrain_blocks", "lwf", "mlp_head"}
PATHS = [MINI / f"shafahi_{name}.toml" for name in sorted(RECIPES)]


def test_every_finding_has_its_recipe():
    assert {p.stem.removeprefix("shafahi_") for p in MINI.glob("shafahi_*.toml")} == RECIPES


@pytest.mark.parametrize("profile", [None, "smoke"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_mini_recipe_validates(cli, path, profile):
    result = cli("validate", path, *(["--profile", profile] if profile else []))
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_smoke_profile_is_small_and_full_recipe_is_the_calibrated_setup(path):
    full = resolve(load_recipe(path), default_registry())
    smoke = resolve(load_recipe(path, "smoke"), default_registry())
    for spec in full:  # the setting of spec/cpu-scale.md, so the recipes' numbers are comparable
        assert spec.eval.n == 1000 and spec.source.train.epochs == 5
        assert spec.source.data.config.classes == [0, 1, 2, 3, 4] and spec.target.config.classes == [5, 6, 7, 8, 9]
        assert all(a.config.eps == 0.3 and a.config.steps == 20 for a in spec.attacks)
    for spec in smoke:  # seconds: tiny subsets, one source epoch, few attack steps
        assert spec.eval.n <= 100 and spec.source.train.epochs <= 1 and spec.source.data.config.per_class <= 100
        assert all(a.config.steps <= 5 for a in spec.attacks)
    assert 2 <= len(smoke) <= len(full)


def run_mini(name: str, out) -> dict[str, dict[str, float]]:
    """Run recipes/mini/shafahi_NAME.toml as shipped on MNIST; metrics by sweep-point id."""
    return {run["id"]: run["metrics"] for run in run_on_mnist(MINI / f"shafahi_{name}.toml", out)}


@pytest.mark.slow
def test_robustness_transfers_through_frozen_robust_features_only(tmp_path, one_thread):
    runs = run_mini("frozen_features", tmp_path)
    natural, robust = runs["objective=natural"], runs["objective=pgd-at"]
    assert natural["clean"] > 0.85 and robust["clean"] > 0.85  # both probes are useful classifiers
    for attack in ("PGD-20", "CW-20"):
        assert natural[attack] <= 0.05  # natural features carry no robustness at eps 0.3
        assert robust[attack] >= natural[attack] + 0.09  # half the measured gap (0.18 PGD, 0.19 CW)


@pytest.mark.slow
def test_retraining_more_blocks_on_natural_data_loses_robustness(tmp_path, one_thread):
    runs = run_mini("retrain_blocks", tmp_path)
    pgd = {k: runs[f"k={k}"]["PGD-20"] for k in range(1, 6)}
    assert all(runs[f"k={k}"]["clean"] > 0.75 for k in range(1, 6))  # k=1 (head, 3 epochs) measured 0.81
    kept = max(pgd[1], pgd[2])  # measured 0.19 and 0.24
    assert kept >= pgd[5] + 0.12  # half the measured gap: the head and fc alone keep the source's robustness
    assert pgd[5] <= 0.05  # every block retrained naturally: a natural model (measured 0.000)
    assert pgd[4] <= kept - 0.1  # retraining conv2 as well loses it (measured 0.007)


@pytest.mark.slow
def test_lwf_lambda_trades_clean_accuracy_for_robustness(tmp_path, one_thread):
    runs = run_mini("lwf", tmp_path)
    plain, mid, strong = runs["lambda_d=0"], runs["lambda_d=0.01"], runs["lambda_d=0.1"]
    assert all(run["clean"] > 0.8 for run in runs.values())
    # Measured PGD-20: 0.064 (lambda 0, plain fine-tuning), 0.131 (1e-2), 0.166 (0.1); every run
    # shares the seed, so an LwF that ignored lambda_d would give equal numbers.
    assert mid["PGD-20"] >= plain["PGD-20"] + 0.035
    assert strong["PGD-20"] >= plain["PGD-20"] + 0.05
    assert strong["clean"] <= plain["clean"] - 0.05  # the price: measured 0.847 vs 0.965


@pytest.mark.slow
def test_mlp_heads_on_natural_features_stay_non_robust_under_pgd_and_cw(tmp_path, one_thread):
    # The paper's gradient masking (PGD-only robustness of deep heads, Fig. 4) does not appear at
    # this scale; what holds is that no head depth makes natural features robust, under either attack.
    runs = run_mini("mlp_head", tmp_path)
    assert set(runs) == {f"hidden_layers={d}" for d in range(4)}
    for run in runs.values():
        assert run["clean"] > 0.85
        assert run["PGD-20"] <= 0.05 and run["CW-20"] <= 0.05
