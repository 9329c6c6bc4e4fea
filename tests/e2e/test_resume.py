"""Reliability: `rtk run` SIGKILLed during source training, transfer training, certification or between
sweep points and then resumed gives exactly the numbers of an uninterrupted run; training
checkpoints; --deterministic."""
import json
import os
import time
import types
from pathlib import Path

import pytest
import torch

import rtk
from rtk.stages.context import RunContext
from rtk.errors import RtkError
from rtk.models import read_state_dict
from rtk.config.recipe import load_recipe
from rtk.registry import registry_with, using
from rtk.services.store import SourceStore
from rtk.stages.runner import Runner
from rtk.stages.training import CrossEntropy, fit
from tests.helpers import TINY_RECIPE
from tests.helpers import kill_cli_at_marker

pytestmark = pytest.mark.usefixtures("one_thread")


class HangingCE(CrossEntropy):
    """Cross-entropy, except that in a process whose environment says RTK_TEST_HANG=FILE:K it
    writes FILE and sleeps at the K-th loss of the process: a subprocess to SIGKILL at a known step."""

    calls = 0
    deterministic: list[bool] = []

    def loss(self, model, images, labels):
        HangingCE.calls += 1
        HangingCE.deterministic.append(torch.are_deterministic_algorithms_enabled())
        marker, _, at = os.environ.get("RTK_TEST_HANG", "").partition(":")
        if marker and HangingCE.calls == int(at):
            open(marker, "w").close()
            time.sleep(600)
        return super().loss(model, images, labels)


def register_objectives(register):
    from rtk_plugins.objectives import NaturalConfig

    register("hanging-ce", lambda config: HangingCE(), config=NaturalConfig, summary="CE that can hang")


def register_transfer_strategies(register):
    import rtk_plugins.transfer.heads as heads
    import rtk_plugins.transfer.probe as probe
    from rtk_plugins.transfer import LinearProbeConfig

    class HangingProbe(probe.LinearProbe):
        """rtk's linear probe, its head trained with HangingCE."""

        def transfer(self, model, data, ctx, objective=None):
            plain, heads.CrossEntropy = heads.CrossEntropy, HangingCE
            try:
                return super().transfer(model, data, ctx, objective)
            finally:
                heads.CrossEntropy = plain

    register("hanging-probe", HangingProbe, config=LinearProbeConfig, summary="linear probe that can hang")


class HangingCertifier:
    """Counts the examples the model gets right; hangs first when RTK_TEST_HANG_CERTIFY names a marker file."""

    def __init__(self, config):
        self.config = config

    def certify(self, model, data, ctx):
        marker = os.environ.get("RTK_TEST_HANG_CERTIFY")
        if marker:
            open(marker, "w").close()
            time.sleep(600)
        images, labels = data.take(torch.arange(len(data)))
        with torch.no_grad():
            correct = model(images.to(ctx.device)).argmax(1).cpu() == labels
        return {"metrics": {"correct": float(correct.float().mean())}}


def register_certifiers(register):
    register("hanging-certifier", HangingCertifier, summary="counts correct examples; can hang")


def make_registry():
    plugin = types.ModuleType("hanging_training")
    plugin.register_objectives = rtk.hookimpl(register_objectives)
    plugin.register_transfer_strategies = rtk.hookimpl(register_transfer_strategies)
    plugin.register_certifiers = rtk.hookimpl(register_certifiers)
    return registry_with(plugin)


# Source: 631 examples, batch 64 -> 10 steps an epoch, 2 epochs (losses 1-20), a checkpoint
# every 4 steps. Probe: 5 steps an epoch, 3 epochs per sweep point (losses 21-35, then 36-50).
RECIPE = (TINY_RECIPE.replace("[source.train]",
                              '[source.objective]\nname = "hanging-ce"\n\n[source.train]\ncheckpoint_every = 4')
          .replace('strategy = "linear-probe"', 'strategy = "hanging-probe"\nbatch_size = 128')
          + '\n[sweep]\n"transfer.lr" = [0.01, 0.03]\n')


@pytest.fixture(scope="module")
def registry():
    return make_registry()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "recipe.toml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def uninterrupted(recipe, registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    Runner(load_recipe(recipe), registry, out, show_progress=False).run()
    return out


def killed_at(recipe, out: Path, loss: int | None) -> None:
    """`rtk run RECIPE --out OUT` in a subprocess, SIGKILLed while it computes its ``loss``-th
    loss (None: while it runs its first certification)."""
    marker = out.parent / f"{out.name}-hanging"
    hang = {"RTK_TEST_HANG": f"{marker}:{loss}"} if loss is not None else {"RTK_TEST_HANG_CERTIFY": str(marker)}
    stderr = kill_cli_at_marker("tests.e2e.test_resume:make_registry", ["run", recipe, "--out", out, "--quiet"], marker,
                                hang, timeout=120, one_thread=True)
    assert marker.exists(), f"the run never reached loss {loss}: {stderr!r}"


def resume(recipe, registry, out: Path) -> dict:
    with using(registry):
        return Runner(load_recipe(recipe), registry, out, show_progress=False, resume=True).run()


def same_run(out: Path, whole: Path) -> None:
    first, second = (json.loads((d / "results.json").read_text()) for d in (out, whole))
    assert first["complete"] and len(first["runs"]) == 2
    for a, b in zip(first["runs"], second["runs"]):
        assert a["metrics"] == b["metrics"] and a["flags"] == b["flags"]
        assert [a["source"][k] for k in ("key", "clean")] == [b["source"][k] for k in ("key", "clean")]
    sources = [Path(json.loads((d / "results.json").read_text())["runs"][0]["source"]["store"]) for d in (out, whole)]
    files = [(sources[0] / "weights.safetensors", sources[1] / "weights.safetensors")]
    files += [(d / "checkpoints" / f"{name}.safetensors" for d in (out, whole)) for name in ("run-0", "run-1")]
    for mine, theirs in ((read_state_dict(a), read_state_dict(b)) for a, b in files):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not (out / "train-state").exists() and not (out / "eval-state").exists()


def test_killed_during_source_training(recipe, registry, uninterrupted, tmp_path):
    out = tmp_path / "out"
    killed_at(recipe, out, 7)
    state = torch.load(out / "train-state" / "source-0.pt", weights_only=True)
    assert (state["epoch"], state["done"], state["step"]) == (0, 4, 4)  # mid-epoch: 4 of 10 batches
    resume(recipe, registry, out)
    same_run(out, uninterrupted)
    # Resumed, not reused: this run trained the source (its own store; the fixture's run used another).
    assert not json.loads((out / "results.json").read_text())["runs"][0]["source"]["reused"]


def test_killed_during_transfer_training(recipe, registry, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    killed_at(recipe, out, 28)  # 2nd probe epoch, after the 1st epoch's checkpoint
    assert not (out / "train-state" / "source-0.pt").exists()  # dropped once the source was saved
    assert torch.load(out / "train-state" / "transfer-0.pt", weights_only=True)["epoch"] == 1
    assert len(SourceStore().entries()) == 1  # the finished source is in the store
    import rtk.stages.source

    trained = []
    real_fit = rtk.stages.source.fit
    monkeypatch.setattr(rtk.stages.source, "fit",
                        lambda *a, **k: trained.append(k.get("description")) or real_fit(*a, **k))
    resume(recipe, registry, out)
    assert not any(d.startswith("source") for d in trained)  # the finished source is loaded, not trained again
    same_run(out, uninterrupted)


def test_killed_between_sweep_points(recipe, registry, uninterrupted, tmp_path):
    out = tmp_path / "out"
    killed_at(recipe, out, 36)  # the first probe step of the second sweep point
    before = json.loads((out / "results.json").read_text())
    assert not before["complete"] and len(before["runs"]) == 1
    resume(recipe, registry, out)
    same_run(out, uninterrupted)
    assert json.loads((out / "results.json").read_text())["runs"][0] == before["runs"][0]  # not recomputed


def test_killed_during_certification(registry, tmp_path):
    path = tmp_path / "certify.toml"
    path.write_text(RECIPE + '\n[certify]\ncertifier = "hanging-certifier"\n')
    whole = tmp_path / "whole"
    Runner(load_recipe(path), registry, whole, show_progress=False).run()
    out = tmp_path / "out"
    killed_at(path, out, None)
    from safetensors import safe_open

    with safe_open(str(out / "eval-state" / "run-0.safetensors"), framework="pt") as handle:
        assert int(handle.get_tensor("done")) == 60  # evaluation finished before certification began
    resume(path, registry, out)
    same_run(out, whole)
    first, second = (json.loads((d / "results.json").read_text())["runs"] for d in (out, whole))
    assert [r["certify"] for r in first] == [r["certify"] for r in second]


def tiny_data():
    from rtk.data import ImageSet

    generator = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(50, 1, 8, 8, generator=generator), torch.randint(0, 3, (50,), generator=generator))


def tiny_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))


class Scripted(CrossEntropy):
    """Cross-entropy plus a little global-RNG noise; at call ``at`` it is interrupted or NaN."""

    def __init__(self, at=0, fault=KeyboardInterrupt):
        self.calls, self.at, self.fault = 0, at, fault

    def loss(self, model, images, labels):
        self.calls += 1
        if self.calls == self.at and self.fault is KeyboardInterrupt:
            raise KeyboardInterrupt
        loss = super().loss(model, images, labels) + 0.01 * torch.rand(())
        return loss * float("nan") if self.calls == self.at else loss


def test_mid_epoch_checkpoint_resumes_bit_identically_with_augmentation(tmp_path):
    from rtk.config.schema import TrainConfig

    data, ctx = tiny_data(), RunContext(show_progress=False)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, schedule="cosine", augment="crop-flip", checkpoint_every=3)
    whole = tiny_model()
    history = fit(whole, data, Scripted(), cfg, ctx, checkpoint=None)
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), data, Scripted(11), cfg, ctx, checkpoint=path)  # epoch 2 (7 batches an epoch), batch 4
    assert torch.load(path, weights_only=True)["done"] == 2  # saved at step 9
    torch.manual_seed(123)  # a resumed process starts from another global RNG state
    resumed = tiny_model()
    assert fit(resumed, data, Scripted(), cfg, ctx, checkpoint=path, resume=True) == history
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(RtkError, match="another training"):
        fit(tiny_model(), data, Scripted(), TrainConfig(epochs=3, batch_size=8), ctx, checkpoint=path, resume=True)


def test_nan_loss_names_the_last_checkpoint(tmp_path):
    from rtk.config.schema import TrainConfig

    ctx = RunContext(show_progress=False, checkpoint_dir=tmp_path, train_stage="transfer")
    cfg = TrainConfig(epochs=2, batch_size=8)  # 7 steps an epoch
    with pytest.raises(RtkError) as error:
        fit(tiny_model(), tiny_data(), Scripted(10, "nan"), cfg, ctx, description="probe")
    assert str(error.value).startswith("transfer (probe): loss became nan at epoch 2, step 10 (last good checkpoint"
                                       f" {tmp_path / 'transfer-0.pt'});")
    with pytest.raises(RtkError, match=r"at epoch 1, step 3 \(no checkpoint yet\)"):
        fit(tiny_model(), tiny_data(), Scripted(3, "nan"), cfg, ctx, description="probe")


def test_deterministic_flag(recipe, registry, cli, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    HangingCE.deterministic.clear()
    with using(registry):
        result = cli("run", recipe, "--out", tmp_path / "out", "--set", "sweep.transfer.lr=[0.01]", "--set",
                     "source.train.epochs=1", "--quiet", "--deterministic")
    assert result.exit_code == 0, result.stderr
    assert HangingCE.deterministic and all(HangingCE.deterministic)
    assert json.loads((tmp_path / "out" / "env.json").read_text())["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled() == before
