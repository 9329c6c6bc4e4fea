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


def test_quickstart_records_curves_of_both_sources_and_transfers(tmp_path, cli):
    import json

    out = tmp_path / "out"
    result = cli("run", REPO / "recipes" / "quickstart.toml", "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = {}
    for record in records:
        if record["kind"] == "epoch":
            epochs.setdefault(record["stage"], []).append(record["epoch"])
    sources = [stage for stage in epochs if stage.startswith("source")]
    transfers = [stage for stage in epochs if stage.startswith("transfer")]
    assert len(sources) == 2 and all(epochs[s] == list(range(1, 31)) for s in sources)  # 30 source epochs
    assert len(transfers) == 2 and all(epochs[t] == list(range(1, 51)) for t in transfers)  # 50 probe epochs
    assert "curves: " in result.stdout + result.stderr
    plotted = cli("plot", "--curves", out)
    assert plotted.exit_code == 0, plotted.stderr
    assert (out / "curves.png").stat().st_size > 10_000
