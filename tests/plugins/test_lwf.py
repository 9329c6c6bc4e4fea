"""The LwF-style feature distillation of Shafahi et al. (arXiv:1905.08232, Sec. 6): its loss, z0 cached
once, the two phases, frozen BN statistics, the effect of lambda_d, resume, and an end-to-end run."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import rtk.stages.training
import rtk_plugins.lwf.strategy as impl
from rtk.config.fields import ConfigValueError, build_config
from rtk.stages.context import RunContext
from rtk.errors import RtkError
from rtk.models import RtkModel
from rtk.stages.training import CrossEntropy
from rtk_plugins.lwf import LwFConfig
from tests.helpers import TINY_RECIPE
from tests.plugins.test_transfer_strategies import (bn_affine, bn_buffers, bn_cnn, changed, digits_target,
                                                    feature_passes, snapshot)

pytestmark = pytest.mark.usefixtures("one_thread")


def lwf(model, data, ctx=None, **options):
    cfg = build_config(LwFConfig, {"epochs": 2, "batch_size": 50, "lr": 0.05, **options})
    return impl.LwF(cfg).transfer(model, data, ctx or RunContext(show_progress=False))


def mean_distance(model, data, z0) -> float:
    with torch.no_grad():
        return float((model.eval().features(data.train.images) - z0).abs().sum(1).mean())


def test_defaults_follow_the_reference_code():
    cfg = LwFConfig()
    assert (cfg.lambda_d, cfg.distance, cfg.warm_start_fraction, cfg.head_init) == (
        0.005, "l1-mean", 0.5, "uniform-unit-scaling")
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.schedule, cfg.batch_size) == ("sgd", 0.9, 1e-3, "constant", 128)
    assert (cfg.weight_decay, cfg.decay_bias_and_norm, cfg.augment, cfg.bn_affine_trainable) == (
        2e-4, False, "none", True)


def test_augmentation_and_objectives_are_rejected():
    with pytest.raises(ConfigValueError, match="augment"):
        build_config(LwFConfig, {"augment": "crop-flip"})
    with pytest.raises(RtkError, match=r"\[transfer.objective\]"):
        impl.LwF(LwFConfig()).transfer(bn_cnn(), digits_target(), RunContext(show_progress=False), CrossEntropy())


@pytest.mark.parametrize("distance,expected_distance", [("l1-mean", (3 + 2) / 2), ("l2", (5 ** 0.5 + 2) / 2)])
def test_loss_is_ce_plus_lambda_times_mean_distance(distance, expected_distance):
    """z = images flattened; a zero head makes CE = log(3) for every example."""
    model = RtkModel(nn.Flatten(), nn.Linear(2, 3), 2, [""])
    nn.init.zeros_(model.head.weight), nn.init.zeros_(model.head.bias)
    images = torch.tensor([[1.0, 2.0], [-1.0, 1.0]]).view(2, 1, 1, 2)
    z0 = torch.tensor([[9.0, 9.0], [0.0, 0.0], [1.0, 1.0]])  # example 0 is not in the batch
    objective = impl.FeatureDistillation(torch.tensor([0, 1, 2]), z0, lambda_d=0.1, distance=distance)
    objective.setup(model, torch.device("cpu"))
    loss = objective.loss(model, images, torch.tensor([1, 2]))  # the batch holds examples 1 and 2
    assert loss.item() == pytest.approx(math.log(3) + 0.1 * expected_distance, rel=1e-6)


def test_z0_is_computed_once_and_the_source_never_runs_again(monkeypatch):
    # 2 head-only epochs on the cache, 2 epochs of all weights
    caches, images, n = feature_passes(monkeypatch, lambda model, data: lwf(model, data, epochs=4))
    assert caches == 1
    assert images == n * (1 + 2)  # z0 once, then one forward per phase-2 example


def test_phase_one_trains_only_the_head():
    model = bn_cnn()
    before = snapshot(model)
    lwf(model, digits_target(), warm_start_fraction=1.0)
    after = snapshot(model)
    assert not any(changed(before, after, "body").values())
    assert model.num_classes == 5


def test_phase_two_uses_a_fresh_optimizer_over_all_weights(monkeypatch):
    built = []
    real = rtk.stages.training.make_optimizer

    def recording(params, cfg):
        optimizer = real(params, cfg)
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        built.append((ids, len(optimizer.state), optimizer))
        return optimizer

    monkeypatch.setattr(rtk.stages.training, "make_optimizer", recording)
    model = bn_cnn()
    before = snapshot(model)
    lwf(model, digits_target(), epochs=2)
    (head_ids, _, first), (all_ids, state_at_start, second) = built
    assert head_ids == {id(p) for p in model.head.parameters()}
    assert all_ids == {id(p) for p in model.parameters()} and first is not second and state_at_start == 0
    body = changed(before, snapshot(model), "body")
    assert all(v for k, v in body.items() if k.split(".")[-1] in ("weight", "bias"))


def test_bn_statistics_never_change_and_affine_can_be_frozen():
    model = bn_cnn()
    before = snapshot(model)
    lwf(model, digits_target(), bn_affine_trainable=False)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in bn_buffers("body", before))
    assert not any(changed(before, after, k)[k] for k in bn_affine(model))
    assert all(changed(before, after, "body.0.0").values())  # the convolutions did train
    trained = bn_cnn()
    lwf(trained, digits_target())
    assert all(changed(before, snapshot(trained), k)[k] for k in bn_affine(trained))  # the default trains them
    assert all(torch.equal(before[k], trained.state_dict()[k]) for k in bn_buffers("body", before))


def test_large_lambda_keeps_features_near_z0():
    data = digits_target()
    with torch.no_grad():
        z0 = bn_cnn().features(data.train.images)
    options = {"epochs": 6, "lr": 0.1, "warm_start_fraction": 1 / 3}
    free, held = bn_cnn(), bn_cnn()
    lwf(free, data, lambda_d=0.0, **options)
    lwf(held, data, lambda_d=1.0, **options)
    assert mean_distance(held, data, z0) < 0.3 * mean_distance(free, data, z0)


def test_interrupted_lwf_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Killed in phase 2 (after phase 1 and one phase-2 checkpoint), a resumed run skips phase 1 and
    ends with the weights of an uninterrupted run."""
    data = digits_target()
    options = {"epochs": 4, "checkpoint_every": 2}

    def run_ctx(folder, resume=False):
        return RunContext(show_progress=False, checkpoint_dir=tmp_path / folder, resume=resume, train_stage="transfer")

    torch.manual_seed(5)
    whole = lwf(bn_cnn(), data, run_ctx("whole"), **options)
    steps = []
    real_loss = impl.FeatureDistillation.loss

    def stopping(self, *args):
        steps.append(1)
        if len(steps) == 7:  # phase 2, epoch 2, after the checkpoint at step 6
            raise RuntimeError("killed")
        return real_loss(self, *args)

    monkeypatch.setattr(impl.FeatureDistillation, "loss", stopping)
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="killed"):
        lwf(bn_cnn(), data, run_ctx("out"), **options)
    monkeypatch.setattr(impl.FeatureDistillation, "loss", lambda self, *a: steps.append(1) or real_loss(self, *a))
    monkeypatch.setattr(CrossEntropy, "loss", lambda *a: pytest.fail("phase 1 trained again"))
    steps.clear()
    torch.manual_seed(5)
    resumed = lwf(bn_cnn(), data, run_ctx("out", resume=True), **options)
    assert len(steps) == 2  # steps 7 and 8 of phase 2
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_rtk_run_lwf(write_recipe, tmp_path, cli):
    recipe = TINY_RECIPE.replace('strategy = "linear-probe"\nepochs = 3\nlr = 1e-2',
                                 'strategy = "lwf"\nepochs = 6\nlr = 0.05\nlambda_d = 0.01\ndistance = "l2"')
    out = tmp_path / "out"
    result = cli("run", write_recipe(recipe), "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["metrics"]["clean"] > 0.5  # five digit classes: chance is 0.2


def test_indexed_batches_carry_example_indices_through_worker_processes_too():
    """run.workers > 0 loads file-backed sets through a DataLoader: LwF's indexed view must
    yield the same (images, index) batches there as in memory."""
    from rtk.data import FileImageSet, ImageSet, iterate

    images = torch.rand(10, 1, 4, 4)
    labels = torch.arange(10) % 3
    file_backed = FileImageSet([(images[i], int(labels[i])) for i in range(10)], labels)
    in_memory = ImageSet(images, labels)
    order = torch.Generator().manual_seed(0)
    loaded = list(iterate(impl.Indexed(file_backed), 4, shuffle=True, generator=order, num_workers=1))
    order = torch.Generator().manual_seed(0)
    direct = list(iterate(impl.Indexed(in_memory), 4, shuffle=True, generator=order, num_workers=1))
    assert [len(b[1]) for b in loaded] == [4, 4, 2]
    for (x, idx), (x_mem, idx_mem) in zip(loaded, direct):
        assert torch.equal(idx, idx_mem) and torch.allclose(x, images[idx]) and torch.allclose(x_mem, images[idx])
