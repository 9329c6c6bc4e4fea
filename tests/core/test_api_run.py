"""rtk.load_recipe / rtk.run / rtk.Results: the CLI's run from Python, with the same results.json."""
import json
import subprocess
import sys

import pytest

import rtk
from rtk.errors import RecipeError, RtkError
from tests.helpers import TINY_RECIPE


def without_timings(payload: dict) -> dict:
    """results.json less the seconds each run took (the one field two runs cannot share)."""
    payload = json.loads(json.dumps(payload))
    for run in payload["runs"]:
        run.pop("seconds")
    return payload


def test_api_and_cli_write_identical_results(write_recipe, tmp_path, cli):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.01, 0.05]\n')
    cli("run", path, "--out", tmp_path / "prime", "--quiet")  # both runs below reuse the stored source
    result = cli("run", path, "--out", tmp_path / "cli", "--set", "eval.n=40", "--seeds", "0", "--quiet")
    assert result.exit_code == 0, result.stderr
    recipe = rtk.load_recipe(path, set={"eval.n": 40, "run.seeds": [0]})
    results = rtk.run(recipe, out=tmp_path / "api", quiet=True)
    from_cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    from_api = json.loads((tmp_path / "api" / "results.json").read_text())
    assert without_timings(from_cli) == without_timings(from_api)
    assert from_api["overrides"] == ["eval.n=40", "run.seeds=[0]"]
    assert (tmp_path / "cli" / "results.csv").read_text() == (tmp_path / "api" / "results.csv").read_text()
    assert results.payload == from_api and len(results) == 2


def test_results_rows_pandas_table_and_metric(write_recipe, tmp_path):
    results = rtk.run(write_recipe(TINY_RECIPE), out=tmp_path / "out", quiet=True, seeds=[0, 1])
    assert [run["id"] for run in results.runs] == ["seed=0", "seed=1"]
    assert results.metric("clean") == {run["id"]: run["metrics"]["clean"] for run in results.runs}
    frame = results.to_pandas()
    assert list(frame["seed"]) == [0, 1] and list(frame["clean"]) == list(results.metric("clean").values())
    assert "PGD-5" in frame.columns and "robust" in frame.columns
    assert [entry["seeds"] for entry in results.summary] == [[0, 1]]
    text = repr(results)  # the table: one row for the point, the mean over its seeds
    assert "tiny" in text and f"{results.summary[0]['metrics']['clean']['mean']:.3f}" in text
    again = rtk.Results.load(tmp_path / "out")
    assert again.payload == results.payload


def test_results_load_errors(tmp_path):
    with pytest.raises(RtkError, match="no results.json"):
        rtk.Results.load(tmp_path)
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(RtkError, match="cannot read"):
        rtk.Results.load(tmp_path)


def test_load_recipe_validates_and_reports_one_line(write_recipe):
    path = write_recipe(TINY_RECIPE)
    recipe = rtk.load_recipe(path, set={"transfer.lr": 0.5, "eval.attacks.0.eps": "8/255"})
    assert recipe.raw["transfer"]["lr"] == 0.5 and recipe.raw["eval"]["attacks"][0]["eps"] == "8/255"
    assert recipe.overrides == ["transfer.lr=0.5", 'eval.attacks.0.eps="8/255"']
    with pytest.raises(RecipeError, match="transfer.*bogus"):
        rtk.load_recipe(path, set={"transfer.bogus": 1})
    assert rtk.load_recipe(path, set={"transfer.bogus": 1}, validate=False).raw["transfer"]["bogus"] == 1


def test_every_public_name_is_documented_with_an_example():
    for name in rtk.__all__:
        if name.startswith("__") or name in ("hookimpl", "RtkError"):
            continue
        value = getattr(rtk, name)
        assert value.__doc__ and "Example" in value.__doc__, name


def test_import_rtk_loads_neither_torch_nor_plugins():
    code = ("import sys, rtk; rtk.evaluate; rtk.run; rtk.load_recipe; rtk.model; rtk.source; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('rtk_plugins', 'timm', 'torchattacks'))];"
            " print(bad)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_dataset_loads_as_a_recipe_target_does():
    import torch

    data = rtk.dataset("digits", classes=[5, 6, 7, 8, 9], image_size=32, channels=3)
    images, labels = data.train.take(torch.arange(64))
    assert images.shape == (64, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert data.num_classes == 5 and len(data.test) == 269 and set(labels.tolist()) <= set(range(5))
    with pytest.raises(RtkError, match="channels"):
        rtk.dataset("digits", channels=2)
