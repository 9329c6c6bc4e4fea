"""rtk run --tracker tensorboard --tracker mlflow: what the Runner hands the trackers, read back with
TensorBoard's own reader and MLflow's client (offline, files in the run folder)."""
import json

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def tracked_quickstart(tmp_path_factory):
    """The quickstart's smoke profile run once with two trackers; (out, cli result)."""
    from click.testing import CliRunner

    from rtk.cli import cli

    out = tmp_path_factory.mktemp("tracked") / "out"
    result = CliRunner().invoke(cli, ["run", str(REPO / "recipes" / "quickstart.toml"), "--profile", "smoke",
                                      "--out", str(out), "--quiet", "--tracker", "tensorboard", "--tracker",
                                      "mlflow"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_tensorboard_reads_back_every_curve_and_result(tracked_quickstart):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tracked_quickstart
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in (r for r in records if r["kind"] == "epoch"):
        tag = f"{record['stage']}/{record['fit']}/loss"
        assert tag in tags, tag
        steps = {e.step: e.value for e in events.Scalars(tag)}
        assert steps[record["step"]] == pytest.approx(record["loss"], rel=1e-6)
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        (event,) = events.Scalars(f"results/{run['id']}/PGD-20")
        assert event.value == pytest.approx(run["metrics"]["PGD-20"])


def test_mlflow_reads_back_params_curves_results_and_artifacts(tracked_quickstart):
    from mlflow.tracking import MlflowClient

    out, _ = tracked_quickstart
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["source.train.epochs"] == "2" and run.data.params["eval.n"] == "50"
    results = json.loads((out / "results.json").read_text())
    for point in results["runs"]:
        key = point["id"].replace("=", "_")
        assert run.data.metrics[f"results/{key}/clean"] == pytest.approx(point["metrics"]["clean"])
    transfer_losses = [k for k in run.data.metrics if k.startswith("transfer") and k.endswith("/loss")]
    assert len(transfer_losses) == 2
    history = client.get_metric_history(run.info.run_id, transfer_losses[0])
    assert len(history) == 2  # [profile.smoke] transfer.epochs = 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "metrics.jsonl", "recipe.resolved.toml"} <= artifacts


def test_an_unknown_or_missing_tracker_stops_before_the_run(cli, tmp_path, monkeypatch):
    result = cli("run", REPO / "recipes" / "quickstart.toml", "--out", tmp_path / "x", "--tracker", "tensorbored")
    assert result.exit_code == 2 and 'unknown tracker "tensorbored"' in result.stderr
    assert "did you mean 'tensorboard'" in result.stderr and not (tmp_path / "x").exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = cli("run", REPO / "recipes" / "quickstart.toml", "--out", tmp_path / "y", "--tracker", "mlflow")
    assert result.exit_code == 2 and "needs the mlflow package" in result.stderr
    assert "pip install mlflow" in result.stderr
    assert not (tmp_path / "y").exists()


def test_trackers_listed_in_the_recipe(write_recipe, tmp_path):
    from tests.helpers import TINY_RECIPE
    import rtk

    path = write_recipe(TINY_RECIPE.replace('device = "cpu"', 'device = "cpu"\ntrackers = ["tensorboard"]'))
    rtk.run(path, out=tmp_path / "out", quiet=True)
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    bad = write_recipe(TINY_RECIPE.replace('device = "cpu"', 'device = "cpu"\ntrackers = [3]'), "bad.toml")
    with pytest.raises(rtk.RtkError, match="trackers"):
        rtk.load_recipe(bad)
