"""End-to-end runs of small recipes: stages, outputs, seeds, worst-case robustness, certification."""
import csv
import json
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import rtk
import rtk.registry
from rtk.config.fields import option
from rtk.config.recipe import load_recipe
from rtk.registry import default_registry, registry_with
from rtk.services.store import SourceStore
from rtk.stages.runner import Runner
from tests.helpers import TINY_RECIPE, quiet_context


def run_recipe(path, out, overrides=(), registry=None, profile=None, store=None):
    recipe = load_recipe(path, profile, list(overrides))
    return Runner(recipe, registry or default_registry(), out, show_progress=False,
                  store=SourceStore(store) if store else None).run()


def test_run_writes_every_output(tiny_recipe, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("run", tiny_recipe, "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    for name in ("recipe.resolved.toml", "env.json", "results.json", "results.csv", "checkpoints/run-0.safetensors"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"] == "tiny" and results["rtk_version"] == rtk.__version__ and results["complete"]
    (run,) = results["runs"]
    assert set(run["metrics"]) == {"clean", "PGD-5", "robust"}
    assert all(0 <= v <= 1 for v in run["metrics"].values())
    assert run["metrics"]["robust"] <= run["metrics"]["PGD-5"] <= run["metrics"]["clean"]
    assert run["n_eval"] == 60 and run["source"]["clean"] > 0.8
    # The source was trained into the store, not the run folder, and results.json says where it is.
    assert run["source"]["reused"] is False and not (out / "checkpoints" / "source-0.safetensors").exists()
    entry = SourceStore().get(run["source"]["key"])
    assert str(entry.path) == run["source"]["store"] and entry.info["clean"] == run["source"]["clean"]
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0 and env["versions"]["torch"] and env["device"] == "cpu"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows[0]["id"] == "tiny" and float(rows[0]["clean"]) == run["metrics"]["clean"]
    assert "PGD-5" in result.stdout  # the results table
    resolved = load_recipe(out / "recipe.resolved.toml")
    assert resolved.raw["eval"]["attacks"][0]["label"] == "PGD-5"


def test_same_seed_same_numbers_on_cpu(tiny_recipe, tmp_path):
    # Two stores, so that the second run trains its source again instead of reusing the first's.
    first = run_recipe(tiny_recipe, tmp_path / "a", store=tmp_path / "store-a")["runs"][0]
    second = run_recipe(tiny_recipe, tmp_path / "b", store=tmp_path / "store-b")["runs"][0]
    assert first["metrics"] == second["metrics"] and not first["source"]["reused"] and not second["source"]["reused"]


def test_existing_results_are_not_overwritten(tiny_recipe, tmp_path, cli):
    out = tmp_path / "out"
    assert cli("run", tiny_recipe, "--out", out, "--quiet", "--profile", "smoke").exit_code == 2  # no smoke profile
    assert not out.exists()  # a refused run writes nothing
    assert cli("run", tiny_recipe, "--out", out, "--quiet").exit_code == 0
    again = cli("run", tiny_recipe, "--out", out, "--quiet")
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_missing_data_writes_nothing(write_recipe, tmp_path, cli):
    path = write_recipe(TINY_RECIPE.replace('dataset = "digits"\nclasses = [5, 6, 7, 8, 9]',
                                            f'dataset = "mnist"\nroot = "{tmp_path / "nowhere"}"'))
    out = tmp_path / "out"
    result = cli("run", path, "--out", out)
    assert result.exit_code == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_sweep_trains_each_distinct_source_once(write_recipe, tmp_path):
    path = write_recipe(TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.01]\n')
    runner = Runner(load_recipe(path), default_registry(), tmp_path / "out", show_progress=False)
    results = runner.run()
    assert len(results["runs"]) == 2 and len(runner.source.trained) == 1
    assert results["runs"][0]["source"] == results["runs"][1]["source"]
    assert (tmp_path / "out" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a sweep is plotted


def test_weights_file_as_source(tiny_recipe, write_recipe, tmp_path):
    first = run_recipe(tiny_recipe, tmp_path / "first")
    weights = Path(first["runs"][0]["source"]["store"]) / "weights.safetensors"
    text = TINY_RECIPE.split("[source.data]")[0].replace('feature_dim = 32', f'feature_dim = 32\nweights = "{weights}"')
    text += TINY_RECIPE.split("[source.train]")[1].split("\n", 5)[-1]  # keep [target] onward
    path = write_recipe(text, "from_weights.toml")
    results = run_recipe(path, tmp_path / "second")
    assert results["runs"][0]["source"]["weights"] == str(weights)
    assert results["runs"][0]["metrics"]["clean"] > 0.5


def test_robust_is_the_per_example_worst_case(write_recipe, tmp_path):
    text = TINY_RECIPE + '\n[[eval.attacks]]\nname = "pgd"\nlabel = "PGD-L2"\nnorm = "L2"\neps = 0.5\nsteps = 5\n'
    runner = Runner(load_recipe(write_recipe(text)), default_registry(), tmp_path / "out", show_progress=False)
    spec = runner.specs[0]
    from rtk.config.schema import EvalConfig
    from rtk.evaluation.robust_accuracy import evaluate

    runner.run()
    run = runner.runs[0]["metrics"]
    assert run["robust"] <= min(run["PGD-5"], run["PGD-L2"])
    # recompute from the per-example rows to check the AND, not the min
    model = spec.source.model.build(num_classes=5)
    from rtk.models import load_weights

    load_weights(model, runner.out_dir / "checkpoints" / "run-0.safetensors")
    target = runner.datasets.get(spec.target)
    result = evaluate(model, target.test, [(a.label, a.build()) for a in spec.attacks], quiet_context(), EvalConfig(),
                      torch.arange(60))
    both = result["correct"]["PGD-5"] & result["correct"]["PGD-L2"]
    assert result["correct"]["robust"].equal(both & result["correct"]["clean"])


@dataclass
class CountConfig:
    scale: float = option(1.0, help="multiplier")


class CountingCertifier:
    def __init__(self, config):
        self.config = config

    def certify(self, model, data, ctx):
        return {"metrics": {"examples": len(data) * self.config.scale}}


def test_certify_stage_runs_a_named_certifier(write_recipe, tmp_path):
    plugin = types.ModuleType("cert_plugin")
    plugin.register_certifiers = rtk.hookimpl(lambda register: register("count", CountingCertifier, config=CountConfig))
    registry = registry_with(plugin)
    path = write_recipe(TINY_RECIPE + '\n[certify]\ncertifier = "count"\nscale = 2.0\n')
    results = run_recipe(path, tmp_path / "out", registry=registry)
    assert results["runs"][0]["certify"] == {"metrics": {"examples": 120.0}}


def test_no_transfer_evaluates_the_source(write_recipe, tmp_path):
    text = TINY_RECIPE.split("[transfer]")[0].replace("classes = [5, 6, 7, 8, 9]", "classes = [0, 1, 2, 3, 4]")
    text += TINY_RECIPE.split("lr = 1e-2")[1]
    results = run_recipe(write_recipe(text), tmp_path / "out")
    assert results["runs"][0]["metrics"]["clean"] == pytest.approx(results["runs"][0]["source"]["clean"], abs=0.1)


def test_nan_loss_stops_with_the_step_named(tiny_recipe, tmp_path, cli):
    result = cli("run", tiny_recipe, "--out", tmp_path / "out", "--set", "source.train.lr=1e30", "--set",
                 "source.train.optimizer=sgd", "--quiet")
    assert result.exit_code == 2 and "loss became" in result.stderr and "step" in result.stderr
    assert "no checkpoint yet" in result.stderr or "last good checkpoint" in result.stderr
