"""The built-in trackers, driven through rtk.tracking.Trackers and read back with each tool's own
reader (TensorBoard's EventAccumulator, MlflowClient, the protobuf records of W&B's offline log).
Everything stays in tmp_path: no network, no tracking server."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtk.registry import default_registry
from rtk.tracking import TRACKER_EXTRAS, Tracker, Trackers, flatten


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No tracker reaches the network: W&B offline (the tracker's default too), no MLflow server."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


RECIPE = {
    "run": {"name": "demo", "seeds": [0, 1], "amp": False},
    "source": {"model": "tiny-cnn", "train": {"epochs": 3, "lr": 0.1}},
    "transfer": {"strategy": "finetune", "lambda_d": 0.5},
    "eval": {"attacks": [{"name": "pgd", "eps": "8/255", "steps": 10}]},
}
# rtk stages restart their steps: W&B must still see one increasing step
STAGES = ["source/tiny-cnn", "transfer/objective=natural"]
STEPS = [10, 20, 30]
RESULTS = {"objective=natural/clean_acc": 0.91, "objective=natural/robust_acc": 0.42}


def loss(stage: str, step: int) -> float:
    return round(1.0 / step + STAGES.index(stage), 6)


def drive(trackers: Trackers, out: Path, status: str = "finished") -> Path:
    """One run as the Runner reports it: start, params, two stages of three epochs, results, a file, the end."""
    recipe_file = out / "recipe.resolved.toml"
    recipe_file.write_text('[run]\nname = "demo"\n\n[transfer]\nlambda_d = 0.5\n')
    trackers.start({"name": "demo", "recipe": "demo.toml", "profile": None, "out_dir": str(out),
                    "points": ["objective=natural"]})
    trackers.log_params(flatten(RECIPE))
    for stage in STAGES:
        for epoch, step in enumerate(STEPS):
            trackers.log_metrics({"loss": loss(stage, step), "clean_acc": 0.1 * epoch, "note": "skipped"}, step, stage)
    trackers.log_results(RESULTS)
    trackers.log_artifact(recipe_file)
    trackers.finish(status)
    return recipe_file


def build(name: str, out: Path, **options):
    return default_registry().build("tracker", name, options, out_dir=out, run_name="demo")


def run_trackers(name: str, tracker) -> tuple[Trackers, list[str]]:
    warnings: list[str] = []
    return Trackers([(name, tracker)], warn=warnings.append), warnings


def test_the_three_trackers_are_registered_with_their_library_and_extra():
    registry = default_registry()
    for name, extra in TRACKER_EXTRAS.items():
        component = registry.get("tracker", name)
        assert component.trait("extra") == extra
        assert component.trait("requires") == {"tensorboard": "tensorboard", "mlflow": "mlflow",
                                               "wandb": "wandb"}[name]
        assert isinstance(component.target, str)  # lazy: built only when a run asks for it


def test_listing_the_trackers_imports_none_of_their_libraries():
    code = ("import sys, rtk_plugins.trackers as t; from rtk.registry import default_registry;"
            " assert sorted(default_registry().names('tracker'))[:3] == ['mlflow', 'tensorboard', 'wandb'];"
            " print(sorted(m for m in ('torch', 'mlflow', 'wandb', 'tensorboard') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- TensorBoard -------------------------------------------------------------------------------


def read_tensorboard(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def text_of(accumulator, tag: str) -> str:
    from tensorboard.util import tensor_util

    (event,) = accumulator.Tensors(f"{tag}/text_summary")  # torch's add_text appends /text_summary
    return tensor_util.make_ndarray(event.tensor_proto).item().decode()


def test_tensorboard_writes_curves_results_params_and_files_into_out_tensorboard(tmp_path):
    trackers, warnings = run_trackers("tensorboard", build("tensorboard", tmp_path))
    drive(trackers, tmp_path)
    assert warnings == []
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = read_tensorboard(tmp_path / "tensorboard")

    scalars = set(events.Tags()["scalars"])
    assert scalars == {f"{stage}/{name}" for stage in STAGES for name in ("loss", "clean_acc")} | {
        f"results/{key}" for key in RESULTS}
    for stage in STAGES:
        curve = events.Scalars(f"{stage}/loss")
        assert [e.step for e in curve] == STEPS
        assert [e.value for e in curve] == pytest.approx([loss(stage, step) for step in STEPS])
    for key, value in RESULTS.items():
        (event,) = events.Scalars(f"results/{key}")
        assert (event.step, event.value) == (0, pytest.approx(value))

    params = text_of(events, "params")
    assert "| transfer.lambda_d | 0.5 |" in params and "| eval.attacks.0.eps | 8/255 |" in params
    assert "| run.seeds | [0, 1] |" in params and "| run.amp | false |" in params
    recipe_text = text_of(events, "files/recipe.resolved.toml")
    assert "    lambda_d = 0.5" in recipe_text and str(tmp_path / "recipe.resolved.toml") in recipe_text

    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    hparams = {tag: HParamsPluginData.FromString(content)
               for tag, content in events.PluginTagToContent("hparams").items()}
    start = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert start["transfer.lambda_d"].number_value == 0.5 and start["source.model"].string_value == "tiny-cnn"
    metrics = [m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos]
    assert metrics == [f"results/{key}" for key in RESULTS]
    assert hparams["_hparams_/session_end_info"].session_end_info.status == Status.Value("STATUS_SUCCESS")


def hparams_end_status(events) -> int:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.PluginTagToContent("hparams")["_hparams_/session_end_info"]
    return HParamsPluginData.FromString(content).session_end_info.status


def test_tensorboard_log_dir_option_and_binary_files_as_paths(tmp_path):
    tracker = build("tensorboard", tmp_path / "out", log_dir=str(tmp_path / "elsewhere"))
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    trackers, warnings = run_trackers("tensorboard", tracker)
    trackers.start({"name": "demo"})
    trackers.log_params({"source.model": "tiny-cnn"})
    trackers.log_artifact(plot)
    trackers.finish("failed")
    assert warnings == [] and not (tmp_path / "out").exists()
    events = read_tensorboard(tmp_path / "elsewhere")
    assert text_of(events, "files/plot.png") == f"`{plot}`"

    from tensorboard.plugins.hparams.api_pb2 import Status

    assert hparams_end_status(events) == Status.Value("STATUS_FAILURE")


# --- MLflow ------------------------------------------------------------------------------------


def test_mlflow_defaults_to_a_sqlite_store_in_the_run_folder_and_keeps_runs_apart(tmp_path, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's own artifact default (./mlruns) would land here
    out = tmp_path / "runs" / "demo-1"
    out.mkdir(parents=True)
    first = build("mlflow", out)
    # a second run in the same process and store, started before the first ends, fails
    second = build("mlflow", tmp_path / "runs" / "demo-2", tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    trackers, warnings = run_trackers("mlflow", first)
    other, other_warnings = run_trackers("mlflow", second)
    other.start({"name": "demo"})
    recipe_file = drive(trackers, out)
    other.log_metrics({"loss": 7.0}, 5, "source/tiny-cnn")
    other.finish("failed")
    assert warnings == other_warnings == []
    assert capfd.readouterr() == ("", "")  # not even MLflow's "Creating initial MLflow database tables"

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("demo")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert {name: run.info.status for name, run in runs.items()} == {"demo-1": "FINISHED", "demo-2": "FAILED"}
    run = runs["demo-1"]

    params = run.data.params
    assert params["transfer.lambda_d"] == "0.5" and params["eval.attacks.0.eps"] == "8/255"
    assert params["run.seeds"] == "[0, 1]" and params["run.amp"] == "false"
    assert len(params) == len(flatten(RECIPE))
    assert run.data.tags["rtk.recipe"] == "demo.toml" and "rtk.profile" not in run.data.tags

    stage_key = "transfer/objective_natural"  # "=" is not valid in an MLflow key
    history = client.get_metric_history(run.info.run_id, f"{stage_key}/loss")
    assert [m.step for m in history] == STEPS
    assert [m.value for m in history] == pytest.approx([loss(STAGES[1], step) for step in STEPS])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "source/tiny-cnn/clean_acc")] == STEPS
    assert "source/tiny-cnn/note" not in run.data.metrics  # not a number
    assert run.data.metrics["results/objective_natural/robust_acc"] == pytest.approx(0.42)
    assert runs["demo-2"].data.metrics == {"source/tiny-cnn/loss": 7.0}

    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["recipe.resolved.toml"]
    stored = out / "mlflow-artifacts" / run.info.run_id / "artifacts" / "recipe.resolved.toml"
    assert stored.read_text() == recipe_file.read_text()
    assert not (tmp_path / "mlruns").exists()

    client.delete_experiment(experiment.experiment_id)
    late, late_warnings = run_trackers("mlflow", build("mlflow", tmp_path / "runs" / "demo-3", tracking_uri=uri))
    late.start({"name": "demo"})
    assert len(late_warnings) == 1 and 'MLflow experiment "demo" is deleted' in late_warnings[0]


def test_mlflow_keys_are_made_valid_and_unique():
    from rtk_plugins.trackers.mlflow_tracker import _unique_keys, mlflow_key

    assert mlflow_key("transfer/lambda_d=0.1,seed=0/clean_acc") == "transfer/lambda_d_0.1_seed_0/clean_acc"
    assert mlflow_key("/a//./b/../c") == "a/b/__/c"
    assert mlflow_key("x" * 300) == "x" * 250
    assert list(_unique_keys({"a=b": 1, "a,b": 2, "a_b": 3})) == ["a_b", "a_b_2", "a_b_3"]


def test_mlflow_tracking_uri_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    tracker = build("mlflow", tmp_path / "out", experiment="study")
    assert (tracker.tracking_uri, tracker.experiment, tracker.run_name) == ("http://tracking.example:5000", "study",
                                                                            "out")


# --- Weights & Biases --------------------------------------------------------------------------


def wandb_records(path: Path):
    """The records of a W&B transaction log (run-<id>.wandb): a LevelDB-style log of 32 KiB blocks
    whose records are wandb.proto Record messages, possibly split into FIRST/MIDDLE/LAST pieces."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def closed_wandb_log(path: Path, timeout: float = 20.0) -> list:
    """The records of a finished run's log. run.finish() returns once W&B's service has the exit
    record; the service writes the log out and closes it a moment later (or when the process exits)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_wandb_writes_an_offline_run_into_out_wandb_without_printing(tmp_path, capfd):
    out = tmp_path / "sweep[lr=0.1]"  # brackets: files are saved by their literal path, not as a glob
    out.mkdir()
    trackers, warnings = run_trackers("wandb", build("wandb", out))
    recipe_file = drive(trackers, out)
    assert warnings == []
    assert capfd.readouterr() == ("", "")
    (run_dir,) = [path for path in (out / "wandb").iterdir() if path.name.startswith("offline-run-")]
    (log,) = run_dir.glob("run-*.wandb")
    records = closed_wandb_log(log)
    of_kind = {}
    for record in records:
        of_kind.setdefault(record.WhichOneof("record_type"), []).append(record)

    (run,) = [record.run for record in of_kind["run"]]
    assert (run.project, run.display_name, run.run_group) == ("rtk", out.name, "demo")
    config = {item.key: json.loads(item.value_json) for r in of_kind["config"] for item in r.config.update}
    config.update({item.key: json.loads(item.value_json) for item in run.config.update})
    assert config["transfer.lambda_d"] == 0.5 and config["eval.attacks.0.eps"] == "8/255"
    assert config["run.seeds"] == "[0, 1]"

    rows = [{"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
            for r in of_kind["history"]]
    assert [row["_step"] for row in rows] == list(range(1, 1 + len(STAGES) * len(STEPS)))
    for stage in STAGES:
        stage_rows = [row for row in rows if f"{stage}/loss" in row]
        assert [row[f"{stage}/step"] for row in stage_rows] == STEPS
        assert [row[f"{stage}/loss"] for row in stage_rows] == pytest.approx([loss(stage, s) for s in STEPS])

    step_axes = {r.metric.glob_name: r.metric.step_metric for r in of_kind["metric"] if r.metric.glob_name}
    assert step_axes == {f"{stage}/*": f"{stage}/step" for stage in STAGES}

    summary = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
               for r in of_kind["summary"] for item in r.summary.update}
    assert {key: summary[f"results/{key}"] for key in RESULTS} == RESULTS
    assert "recipe.resolved.toml" in [f.path for r in of_kind["files"] for f in r.files.files]
    assert (run_dir / "files" / "recipe.resolved.toml").read_text() == recipe_file.read_text()
    assert not (run_dir / "files" / "recipe.resolved.toml").is_symlink()
    (exit_record,) = of_kind["exit"]
    assert exit_record.exit.exit_code == 0


# --- a tracker that fails ----------------------------------------------------------------------


class BrokenTracker(Tracker):
    def __init__(self):
        self.calls = 0

    def log_metrics(self, metrics, step, stage):
        self.calls += 1
        raise ConnectionError("server went away")


def test_a_failing_tracker_is_dropped_with_one_warning_and_the_others_go_on(tmp_path):
    broken = BrokenTracker()
    warnings: list[str] = []
    trackers = Trackers([("broken", broken), ("tensorboard", build("tensorboard", tmp_path))], warn=warnings.append)
    drive(trackers, tmp_path)
    assert broken.calls == 1
    assert len(warnings) == 1 and "tracker broken: log_metrics failed" in warnings[0]
    assert "ConnectionError: server went away" in warnings[0]
    events = read_tensorboard(tmp_path / "tensorboard")
    for stage in STAGES:
        assert [e.step for e in events.Scalars(f"{stage}/loss")] == STEPS
    assert "results/objective=natural/clean_acc" in events.Tags()["scalars"]
