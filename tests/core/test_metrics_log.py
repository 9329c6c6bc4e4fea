"""metrics.jsonl: every training stage of a run records its curve; recording changes no number."""
import json

import torch

from rtk.config.schema import TrainConfig
from rtk.data import ImageSet
from rtk.services.metrics import MetricsLog
from rtk.stages.training import CrossEntropy, fit
from tests.helpers import TINY_RECIPE, quiet_context, small_cnn


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def blobs(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, 1, 8, 8, generator=generator) * 0.3
    images[:, :, :, :] += labels.view(-1, 1, 1, 1) * 0.3  # separable: accuracy must rise
    return ImageSet(images.clamp(0, 1), labels)


def train(ctx, epochs=3):
    torch.manual_seed(0)
    model = small_cnn(3)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=3e-3)
    history = fit(model, blobs(), CrossEntropy(), cfg, ctx, checkpoint=None, description="probe")
    return model, history


def test_fit_records_every_epoch_and_long_epochs_every_n_steps(tmp_path):
    ctx = quiet_context(metrics=MetricsLog(tmp_path), curve_stage="source abc", log_every=4)
    _, history = train(ctx)
    found = records(tmp_path / "metrics.jsonl")
    epochs = [r for r in found if r["kind"] == "epoch"]
    steps = [r for r in found if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["loss"] for r in epochs] == history
    assert {r["stage"] for r in found} == {"source abc"} and {r["fit"] for r in found} == {"probe"}
    assert all(r["steps_per_epoch"] == 6 and r["lr"] == 3e-3 and r["examples_per_s"] > 0 for r in epochs)
    assert [r["step"] for r in epochs] == [6, 12, 18]
    assert [r["step"] for r in steps] == [4, 8, 12, 16]  # every 4 steps: epochs have 6 (> 4)
    assert epochs[-1]["clean_acc"] > epochs[0]["clean_acc"] - 0.2 and epochs[-1]["clean_acc"] >= 0.6
    assert epochs[-1]["clean_acc_on"] == "train"


def test_recording_changes_no_weight(tmp_path):
    recorded, _ = train(quiet_context(metrics=MetricsLog(tmp_path), curve_examples=64))
    plain, _ = train(quiet_context())
    for (name, a), b in zip(recorded.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert not (tmp_path / "other").exists()


def test_no_steps_records_when_epochs_are_short_and_no_accuracy_when_off(tmp_path):
    train(quiet_context(metrics=MetricsLog(tmp_path), log_every=100, curve_examples=0), epochs=2)
    found = records(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in found] == ["epoch", "epoch"]
    assert all("clean_acc" not in r for r in found)


def test_a_run_folder_holds_the_curves_of_the_source_and_the_transfer(write_recipe, tmp_path):
    from rtk.api.recipes import run

    results = run(write_recipe(TINY_RECIPE), tmp_path / "out", quiet=True)
    found = records(tmp_path / "out" / "metrics.jsonl")
    stages = {(r["stage"].split()[0], r["kind"]) for r in found}
    assert stages == {("source", "epoch"), ("transfer", "epoch")}
    source = [r for r in found if r["stage"].startswith("source")]
    transfer = [r for r in found if r["stage"] == "transfer tiny"]
    assert len(source) == 2 and len(transfer) == 3  # [source.train] epochs = 2, [transfer] epochs = 3
    assert len(results.runs) == 1
