"""The transfer strategies of Shafahi et al. (arXiv:1905.08232): linear-probe options, retrain-last-k,
mlp-head, finetune's BatchNorm options; end-to-end runs of each."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from rtk.config.fields import ConfigValueError, build_config
from rtk.data import DataSplits, ImageSet, iterate
from rtk.errors import RtkError
from rtk.models import Normalize, RtkModel
from rtk.config.recipe import load_recipe
from rtk.registry import default_registry
from rtk.stages.runner import Runner
from rtk.stages.training import CrossEntropy
from rtk_plugins.transfer import FinetuneConfig, LinearProbeConfig, MLPHeadConfig, RetrainLastKConfig, make_finetune, make_linear_probe, make_mlp_head, make_retrain_last_k
from tests.helpers import quiet_context
from tests.helpers import TINY_RECIPE

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_cnn(num_classes: int = 10, seed: int = 0) -> RtkModel:
    """A digits CNN with BatchNorm in every block: blocks body.0, body.1, body.2, head (4)."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
        nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, 12), nn.BatchNorm1d(12), nn.ReLU()),
    )
    model = RtkModel(body, nn.Linear(12, num_classes), 12, ["0", "1", "2"], Normalize([0.5], [0.5]))
    # Non-trivial source statistics, so that "kept" and "reset" can be told apart.
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def digits_target(n: int = 200, classes=(5, 6, 7, 8, 9)) -> DataSplits:
    """The first ``n`` training digits of ``classes``, relabelled 0..k-1."""
    from rtk_plugins.datasets import DigitsConfig, make_digits

    splits = make_digits(DigitsConfig())

    def keep(split, limit):
        idx = torch.isin(split.labels, torch.tensor(classes)).nonzero().flatten()[:limit]
        images, labels = split.take(idx)
        return ImageSet(images, torch.searchsorted(torch.tensor(classes), labels))

    return DataSplits(keep(splits.train, n), keep(splits.test, 100), num_classes=len(classes))


def ctx():
    return quiet_context()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict, prefix: str) -> dict[str, bool]:
    return {k: not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and k in after}


def bn_buffers(prefix: str, state: dict) -> list[str]:
    return [k for k in state if k.startswith(prefix) and (k.endswith("running_mean") or k.endswith("running_var"))]


def bn_affine(model: nn.Module) -> list[str]:
    return [f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in ("weight", "bias")]


# ---------------------------------------------------------------- linear-probe


def test_linear_probe_honours_optimizer_decay_and_schedule():
    """The head trained by linear-probe equals a hand-written SGD loop on the same cached features with
    weight decay on the weight only and a multistep schedule."""
    data = digits_target()
    model = bn_cnn()
    with torch.no_grad():
        features = model.features(data.train.images)
    cfg = build_config(LinearProbeConfig, {"optimizer": "sgd", "lr": 0.5, "momentum": 0.5, "weight_decay": 0.05,
                                           "decay_bias_and_norm": False, "schedule": "multistep", "milestones": [1],
                                           "gamma": 0.1, "epochs": 2, "batch_size": 64, "head_init": "zeros"})
    run_ctx = ctx()
    make_linear_probe(cfg).transfer(model, data, run_ctx)

    head = nn.Linear(12, 5)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD([{"params": [head.weight], "weight_decay": 0.05}, {"params": [head.bias], "weight_decay": 0.0}],
                                lr=0.5, momentum=0.5)
    generator = run_ctx.generator(offset=1000)  # fit's batch-order stream
    steps_per_epoch = math.ceil(len(data.train) / 64)
    step = 0
    for _ in range(2):
        for z, y in iterate(ImageSet(features[:, :, None, None], data.train.labels), 64, shuffle=True, generator=generator):
            optimizer.zero_grad()
            nn.functional.cross_entropy(head(z.flatten(1)), y).backward()
            optimizer.step()
            step += 1
            if step == steps_per_epoch:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
    assert torch.allclose(model.head.weight, head.weight, atol=1e-5)
    assert torch.allclose(model.head.bias, head.bias, atol=1e-5)
    # Decaying the bias too gives a different head: the option is not ignored.
    decayed = bn_cnn()
    make_linear_probe(dataclasses.replace(cfg, decay_bias_and_norm=True)).transfer(decayed, data, ctx())
    assert not torch.allclose(decayed.head.bias, head.bias, atol=1e-5)


# ---------------------------------------------------------------- retrain-last-k


def retrain(model, data, objective=None, **options):
    cfg = build_config(RetrainLastKConfig, {"epochs": 1, "batch_size": 50, "lr": 0.05, **options})
    return make_retrain_last_k(cfg).transfer(model, data, ctx(), objective)


def test_retrain_last_k_defaults_follow_section_3():
    cfg = RetrainLastKConfig()
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.batch_size, cfg.augment) == ("sgd", 0.9, 1e-3, 128, "crop-flip")
    assert (cfg.k, cfg.reinit, cfg.bn) == (1, True, "train")


@pytest.mark.parametrize("bn", ["train", "frozen-stats"])
def test_retrain_last_k_trains_exactly_the_last_k_blocks(bn):
    data = digits_target()
    model = bn_cnn()
    before = snapshot(model)
    modes = {"body.0": [], "body.2": []}
    for name in modes:
        model.get_submodule(name).register_forward_pre_hook(lambda m, _, name=name: modes[name].append(m.training))
    retrain(model, data, k=2, bn=bn)
    after = snapshot(model)
    frozen = changed(before, after, "body.0") | changed(before, after, "body.1") | changed(before, after, "preprocess")
    assert frozen and not any(frozen.values())  # weights and BN statistics of earlier layers kept
    trained = {k: v for k, v in changed(before, after, "body.2").items() if not k.endswith("num_batches_tracked")}
    if bn == "frozen-stats":
        for key in bn_buffers("body.2", after):  # reset by reinit, then never updated
            assert torch.equal(after[key], torch.zeros_like(after[key]) if "mean" in key else torch.ones_like(after[key]))
    assert all(trained.values()), trained
    assert model.num_classes == 5
    assert modes["body.0"] and not any(modes["body.0"]) and all(modes["body.2"])  # frozen layers ran in eval mode every step
    assert not model.training


def test_retrain_last_k_bn_train_updates_only_the_retrained_statistics():
    data = digits_target()
    model = bn_cnn()
    reset = bn_cnn()
    retrain(reset, data, k=2, epochs=0)
    retrain(model, data, k=2, bn="train")
    after = snapshot(model)
    for key in bn_buffers("body.2", after):
        assert not torch.equal(after[key], reset.state_dict()[key])


def test_retrain_last_k_can_keep_bn_affine_fixed():
    data = digits_target()
    model, source = bn_cnn(), snapshot(bn_cnn())
    retrain(model, data, k=3, reinit=False, bn_affine_trainable=False)
    after = snapshot(model)
    affine = [k for k in bn_affine(model) if k.startswith(("body.1", "body.2"))]
    assert affine and all(torch.equal(after[k], source[k]) for k in affine)
    assert not torch.equal(after["body.1.0.weight"], source["body.1.0.weight"])  # the conv still trains


def test_retrain_last_k_reinit_resets_and_no_reinit_keeps():
    data = digits_target()
    source = snapshot(bn_cnn())
    fresh = bn_cnn()
    retrain(fresh, data, k=3, epochs=0)  # re-initialised, not trained
    state = snapshot(fresh)
    assert all(changed(source, state, "body.1.0").values()) and all(changed(source, state, "body.2.1").values())
    assert not any(changed(source, state, "body.0").values())
    assert torch.equal(state["body.2.2.running_var"], torch.ones(12))
    kept = bn_cnn(num_classes=5)
    retrain(kept, data, k=3, epochs=0, reinit=False)
    assert not any(changed(snapshot(bn_cnn(num_classes=5)), snapshot(kept), "").values())


def test_retrain_last_k_k1_is_the_head_alone_and_uses_the_objective():
    data = digits_target()
    model = bn_cnn()
    before = snapshot(model)

    class Counting(CrossEntropy):
        calls = 0

        def loss(self, model, images, labels):
            Counting.calls += 1
            return super().loss(model, images, labels)

    retrain(model, data, objective=Counting(), k=1)
    assert Counting.calls == math.ceil(len(data.train) / 50)
    assert not any(changed(before, snapshot(model), "body").values())


def test_retrain_last_k_larger_than_the_model_names_its_block_count():
    with pytest.raises(RtkError, match=r"k = 5 but the model has 4 blocks"):
        retrain(bn_cnn(), digits_target(), k=5)


def test_reinit_refuses_parameters_no_layer_resets():
    from rtk_plugins.transfer.retrain_last_k import reinitialise

    block = nn.Module()
    block.scale = nn.Parameter(torch.ones(3))
    with pytest.raises(RtkError, match="scale.*reinit = false"):
        reinitialise(block, "body.odd")


# ---------------------------------------------------------------- mlp-head


def mlp(model, data, **options):
    cfg = build_config(MLPHeadConfig, {"epochs": 2, "batch_size": 64, "width": 16, **options})
    strategy = make_mlp_head(cfg)
    return strategy, strategy.transfer(model, data, ctx())


def test_mlp_head_defaults_follow_appendix_a2():
    cfg = MLPHeadConfig()
    assert (cfg.hidden_layers, cfg.width, cfg.batchnorm, cfg.dropout) == (1, 2048, False, 0.0)
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.momentum, cfg.lr) == (50, 128, "sgd", 0.9, 0.01)
    assert (cfg.schedule, cfg.milestones, cfg.gamma) == ("multistep", [30.0], 0.1)
    with pytest.raises(ConfigValueError, match="augment"):
        build_config(MLPHeadConfig, {"augment": "flip"})


@pytest.mark.parametrize("layers,batchnorm,dropout", [(0, False, 0.0), (1, False, 0.0), (2, True, 0.25)])
def test_mlp_head_architecture(layers, batchnorm, dropout):
    data = digits_target()
    model = bn_cnn()
    body = snapshot(model.body)
    _, model = mlp(model, data, hidden_layers=layers, batchnorm=batchnorm, dropout=dropout)
    kinds = [type(m) for m in model.head.modules() if not isinstance(m, nn.Sequential)]
    hidden = [nn.Linear] + ([nn.BatchNorm1d] if batchnorm else []) + [nn.ReLU] + ([nn.Dropout] if dropout else [])
    assert kinds == hidden * layers + [nn.Linear]
    if dropout:
        assert all(m.p == dropout for m in model.head.modules() if isinstance(m, nn.Dropout))
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [m.in_features for m in linears] == [12] + [16] * layers and model.num_classes == 5
    assert not any(changed(body, snapshot(model.body), "").values())  # frozen, BN statistics included
    assert not model.training


def test_mlp_head_caches_features_once(monkeypatch):
    import rtk_plugins.transfer.mlp_head as impl

    calls = []
    real = impl.compute_features
    monkeypatch.setattr(impl, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = bn_cnn()
    seen = []
    model.body.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    data = digits_target()
    mlp(model, data, epochs=3)
    assert calls == [1] and sum(seen) == len(data.train)  # one pass over the images, none per epoch


def test_mlp_head_rebuild_reloads_the_trained_head():
    data = digits_target()
    strategy, trained = mlp(bn_cnn(), data, hidden_layers=2, batchnorm=True, dropout=0.25)
    fresh = strategy.rebuild(bn_cnn(seed=1), data.num_classes)
    fresh.load_state_dict(trained.state_dict())  # strict: the same architecture
    fresh.eval()
    x = data.test.images[:20]
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


def test_mlp_head_rejects_an_objective():
    with pytest.raises(RtkError, match=r"\[transfer.objective\]"):
        make_mlp_head(MLPHeadConfig()).transfer(bn_cnn(), digits_target(), ctx(), CrossEntropy())


# ---------------------------------------------------------------- finetune


def finetune(model, data, **options):
    cfg = build_config(FinetuneConfig, {"epochs": 1, "batch_size": 50, "lr": 0.01, **options})
    return make_finetune(cfg).transfer(model, data, ctx())


def test_finetune_frozen_stats_keeps_running_statistics_and_trains_affine():
    model = bn_cnn()
    before = snapshot(model)
    after = snapshot(finetune(model, digits_target(), bn_stats="frozen"))
    stats = bn_buffers("body", before)
    assert len(stats) == 6 and all(torch.equal(before[k], after[k]) for k in stats)
    assert all(changed(before, after, k)[k] for k in bn_affine(model)) and all(changed(before, after, "body.0.0").values())


def test_finetune_frozen_affine_keeps_scales_and_updates_statistics():
    model = bn_cnn()
    before = snapshot(model)
    after = snapshot(finetune(model, digits_target(), bn_affine_trainable=False))
    affine = bn_affine(model)
    assert len(affine) == 6 and not any(changed(before, after, k)[k] for k in affine)
    assert all(changed(before, after, k)[k] for k in bn_buffers("body", before))
    assert all(changed(before, after, "body.0.0").values())


def test_finetune_default_trains_everything_and_old_bn_option_is_gone():
    model = bn_cnn()
    before = snapshot(model)
    after = snapshot(finetune(model, digits_target()))
    assert all(v for k, v in changed(before, after, "body").items() if not k.endswith("num_batches_tracked"))
    with pytest.raises(ConfigValueError, match='unknown key "bn"'):
        build_config(FinetuneConfig, {"bn": "frozen"})


# ---------------------------------------------------------------- end to end


def swapped(strategy_table: str) -> str:
    return TINY_RECIPE.replace('strategy = "linear-probe"\nepochs = 3\nlr = 1e-2', strategy_table)


@pytest.mark.parametrize("table", [
    'strategy = "retrain-last-k"\nk = 2\nepochs = 3\noptimizer = "adam"\nlr = 1e-2\naugment = "flip"',
    'strategy = "mlp-head"\nepochs = 6\nlr = 0.1\nwidth = 32\nbatchnorm = true\ndropout = 0.25\nmilestones = [4]',
    'strategy = "finetune"\nepochs = 3\nlr = 3e-3\nbn_stats = "frozen"\nbn_affine_trainable = false',
], ids=["retrain-last-k", "mlp-head", "finetune"])
def test_rtk_run_with_each_strategy(table, write_recipe, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("run", write_recipe(swapped(table)), "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["metrics"]["clean"] > 0.5  # five digit classes: chance is 0.2


def test_mlp_head_run_resumes_from_the_saved_checkpoint(write_recipe, tmp_path, cli, monkeypatch):
    """A run stopped after the transfer finished (during evaluation) resumes by rebuilding the MLP head
    and loading the saved target weights, without training again, and reports what an uninterrupted run does."""
    import rtk.stages.runner
    import rtk_plugins.transfer.mlp_head as impl

    recipe = write_recipe(swapped('strategy = "mlp-head"\nepochs = 3\nhidden_layers = 2\nwidth = 32\nbatchnorm = true'))
    whole = tmp_path / "whole"
    assert cli("run", recipe, "--out", whole, "--quiet").exit_code == 0
    out = tmp_path / "out"
    real_evaluate = rtk.stages.runner.evaluate

    def interrupted(model, data, attacks, *args, **kwargs):
        if attacks:  # the target's evaluation, not the source's clean accuracy
            raise RuntimeError("stopped during evaluation")
        return real_evaluate(model, data, attacks, *args, **kwargs)

    monkeypatch.setattr(rtk.stages.runner, "evaluate", interrupted)
    with pytest.raises(RuntimeError, match="stopped during evaluation"):
        Runner(load_recipe(recipe), default_registry(), out, show_progress=False).run()
    assert (out / "checkpoints" / "run-0.safetensors").is_file()
    monkeypatch.setattr(rtk.stages.runner, "evaluate", real_evaluate)
    monkeypatch.setattr(impl.MLPHead, "transfer", lambda *a, **k: pytest.fail("trained again"))
    result = cli("run", recipe, "--out", out, "--quiet", "--resume")
    assert result.exit_code == 0, result.stderr
    first, second = (json.loads((d / "results.json").read_text())["runs"][0] for d in (out, whole))
    assert first["metrics"] == second["metrics"]
