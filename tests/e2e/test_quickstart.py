"""The quickstart as shipped shows the paper's first finding (Shafahi et al. 2020, arXiv:1905.08232):
robustness transfers through frozen robust features and not through natural ones."""
from rtk.config.recipe import load_recipe
from rtk.registry import default_registry
from rtk.stages.runner import Runner
from tests.helpers import REPO


def test_quickstart_robust_source_keeps_robustness(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart.toml")
    runner = Runner(recipe, default_registry(), tmp_path / "out", show_progress=False)
    runs = {run["id"]: run["metrics"] for run in runner.run()["runs"]}
    natural, robust = runs["objective=natural"], runs["objective=pgd-at"]
    assert natural["clean"] > 0.85 and robust["clean"] > 0.85  # both transfers are useful classifiers
    assert natural["PGD-20"] <= 0.10  # the eps is one where the natural source's transfer is near zero
    assert robust["PGD-20"] >= 2 * natural["PGD-20"]
    assert robust["PGD-20"] >= natural["PGD-20"] + 0.10
