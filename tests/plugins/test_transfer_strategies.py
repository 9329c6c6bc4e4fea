"""The transfer strategies of Shafahi et al. (arXiv:1905.08232): linear-probe options, retrain-last-k,
mlp-head, finetune's BatchNorm options; end-to-end runs of each."""
from __future__ import annotations

import dataclasses
import json
import math
import typing

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
from rtk_plugins.transfer import FinetuneConfig, LinearProbeConfig, MLPHeadConfig, RetrainLastKConfig
from rtk_plugins.transfer.finetune import Finetune
from rtk_plugins.transfer.mlp_head import MLPHead
from rtk_plugins.transfer.probe import LinearProbe
from rtk_plugins.transfer.retrain_last_k import RetrainLastK
from tests.helpers import build, quiet_context
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
    splits = build("dataset", "digits")

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
    LinearProbe(cfg).transfer(model, data, run_ctx)

    head = nn.Linear(12, 5)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD([{"params": [head.weight], "weight_decay": 0.05},
                                 {"params": [head.bias], "weight_decay": 0.0}], lr=0.5, momentum=0.5)
    generator = run_ctx.generator(offset=1000)  # fit's batch-order stream
    steps_per_epoch = math.ceil(len(data.train) / 64)
    step = 0
    for _ in range(2):
        cached = ImageSet(features[:, :, None, None], data.train.labels)
        for z, y in iterate(cached, 64, shuffle=True, generator=generator):
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
    LinearProbe(dataclasses.replace(cfg, decay_bias_and_norm=True)).transfer(decayed, data, ctx())
    assert not torch.allclose(decayed.head.bias, head.bias, atol=1e-5)


def probe(model, data, **options):
    cfg = build_config(LinearProbeConfig, {"epochs": 2, "batch_size": 50, "lr": 0.05, "optimizer": "sgd", **options})
    return LinearProbe(cfg).transfer(model, data, ctx())


def weights(state: dict) -> dict:
    """Every learned tensor and BN statistic of the body (not num_batches_tracked)."""
    return {k: v for k, v in state.items() if k.startswith(("body", "preprocess")) and "num_batches" not in k}


def test_linear_probe_default_keeps_the_source_bn_statistics():
    data = digits_target()
    model, before = bn_cnn(), snapshot(bn_cnn())
    probe(model, data)
    body = weights(snapshot(model))
    assert body and all(torch.equal(body[k], before[k]) for k in body)  # weights and running statistics
    assert not torch.equal(model.head.weight, bn_cnn(num_classes=5).head.weight) and not model.training


def test_linear_probe_batch_bn_stats_re_estimates_statistics_with_frozen_weights():
    """The study's final-layer policy (model.train() over a frozen ResNet-50): every step runs the body with
    BatchNorm in train mode; the running statistics move towards the target's, no weight of the body changes,
    and the head equals a hand-written loop on batch-statistic features."""
    data = digits_target()
    model, before = bn_cnn(), snapshot(bn_cnn())
    modes = []
    bns = [m for m in model.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns[0].register_forward_pre_hook(lambda m, _: modes.append(m.training))
    run_ctx = ctx()
    cfg = build_config(LinearProbeConfig, {"epochs": 2, "batch_size": 50, "lr": 0.05, "optimizer": "sgd",
                                           "head_init": "zeros", "frozen_bn_stats": "batch"})
    LinearProbe(cfg).transfer(model, data, run_ctx)
    after = snapshot(model)
    stats = bn_buffers("body", after)
    assert stats and all(not torch.equal(after[k], before[k]) for k in stats)  # re-estimated on the target
    learned = [k for k in weights(after) if k not in stats]
    assert learned and all(torch.equal(after[k], before[k]) for k in learned)  # conv, linear, BN affine frozen
    assert len(modes) == 2 * math.ceil(len(data.train) / 50) and all(modes)  # no cached features: every step
    assert not model.training

    # The same by hand: body in eval mode but its BN in train mode, the head alone trained by SGD.
    reference = bn_cnn()
    head = nn.Linear(12, 5)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    reference.eval()
    for bn in (m for m in reference.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.train()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    generator = run_ctx.generator(offset=1000)
    for _ in range(2):
        for x, y in iterate(data.train, 50, shuffle=True, generator=generator):
            optimizer.zero_grad()
            with torch.no_grad():
                z = reference.features(x)
            nn.functional.cross_entropy(head(z), y).backward()
            optimizer.step()
    assert torch.allclose(model.head.weight, head.weight, atol=1e-5)
    for key in stats:
        assert torch.allclose(after[key], reference.state_dict()[key], atol=1e-5)


def test_linear_probe_augments_only_without_a_cache():
    with pytest.raises(ConfigValueError, match='frozen_bn_stats = "batch"'):
        build_config(LinearProbeConfig, {"augment": "flip"})
    cfg = build_config(LinearProbeConfig, {"augment": "flip", "frozen_bn_stats": "batch"})
    assert (cfg.augment, LinearProbeConfig().frozen_bn_stats) == ("flip", "frozen")


class _Augmenting(ImageSet):
    """A training split that augments as it reads (as the study datasets do), with its un-augmented view."""

    def __init__(self, plain: ImageSet):
        super().__init__(torch.rand_like(plain.images), plain.labels)
        self.unaugmented = plain

    def subset(self, indices):
        return _Augmenting(self.unaugmented.subset(indices))


def test_cached_features_come_from_the_unaugmented_view(monkeypatch):
    import rtk_plugins.transfer.heads as heads

    data = digits_target()
    augmenting = dataclasses.replace(data, train=_Augmenting(data.train))
    seen = []
    real = heads.compute_features
    monkeypatch.setattr(heads, "compute_features", lambda model, split, *a, **k: seen.append(split) or
                        real(model, split, *a, **k))
    plain, aug = bn_cnn(), bn_cnn()
    probe(plain, data, head_init="zeros")
    probe(aug, augmenting, head_init="zeros")
    assert seen[1] is data.train and torch.equal(plain.head.weight, aug.head.weight)


# ---------------------------------------------------------------- retrain-last-k


def retrain(model, data, objective=None, **options):
    cfg = build_config(RetrainLastKConfig, {"epochs": 1, "batch_size": 50, "lr": 0.05, **options})
    return RetrainLastK(cfg).transfer(model, data, ctx(), objective)


def test_retrain_last_k_defaults_follow_section_3():
    cfg = RetrainLastKConfig()
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.batch_size, cfg.augment) == ("sgd", 0.9, 1e-3, 128, "crop-flip")
    assert (cfg.k, cfg.reinit, cfg.bn_stats, cfg.bn_affine_trainable, cfg.head_init) == (
        1, True, "batch", True, "default")
    with pytest.raises(ConfigValueError, match='unknown key "bn"'):  # the shared BatchNormOptions vocabulary
        build_config(RetrainLastKConfig, {"bn": "train"})


@pytest.mark.parametrize("bn_stats", ["batch", "frozen"])
def test_retrain_last_k_trains_exactly_the_last_k_blocks(bn_stats):
    data = digits_target()
    model = bn_cnn()
    before = snapshot(model)
    modes = {"body.0": [], "body.2": []}
    for name in modes:
        model.get_submodule(name).register_forward_pre_hook(lambda m, _, name=name: modes[name].append(m.training))
    retrain(model, data, k=2, bn_stats=bn_stats)
    after = snapshot(model)
    frozen = changed(before, after, "body.0") | changed(before, after, "body.1") | changed(before, after, "preprocess")
    assert frozen and not any(frozen.values())  # weights and BN statistics of earlier layers kept
    trained = {k: v for k, v in changed(before, after, "body.2").items() if not k.endswith("num_batches_tracked")}
    if bn_stats == "frozen":
        for key in bn_buffers("body.2", after):  # reset by reinit, then never updated
            reset = torch.zeros_like(after[key]) if "mean" in key else torch.ones_like(after[key])
            assert torch.equal(after[key], reset)
    assert all(trained.values()), trained
    assert model.num_classes == 5
    # The frozen layers ran in eval mode every step.
    assert modes["body.0"] and not any(modes["body.0"]) and all(modes["body.2"])
    assert not model.training


def test_retrain_last_k_bn_stats_batch_updates_only_the_retrained_statistics():
    data = digits_target()
    model = bn_cnn()
    reset = bn_cnn()
    retrain(reset, data, k=2, epochs=0)
    retrain(model, data, k=2, bn_stats="batch")
    after = snapshot(model)
    for key in bn_buffers("body.2", after):
        assert not torch.equal(after[key], reset.state_dict()[key])


@pytest.mark.parametrize("frozen_bn_stats", ["frozen", "batch"])
def test_retrain_last_k_frozen_bn_stats(frozen_bn_stats):
    """The frozen layers' BN keeps the source's statistics by default; "batch" (the study's final-layer
    policy) re-estimates them on the target, and no frozen weight changes either way."""
    data = digits_target()
    model, before = bn_cnn(), snapshot(bn_cnn())
    retrain(model, data, k=1, frozen_bn_stats=frozen_bn_stats)
    after = snapshot(model)
    stats = bn_buffers("body", after)
    moved = [not torch.equal(after[k], before[k]) for k in stats]
    assert stats and (all(moved) if frozen_bn_stats == "batch" else not any(moved))
    learned = [k for k in weights(after) if k not in stats]
    assert learned and all(torch.equal(after[k], before[k]) for k in learned)
    assert not model.training


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
    strategy = MLPHead(cfg)
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


def feature_passes(monkeypatch, transfer) -> tuple[int, int, int]:
    """Feature caches computed (rtk_plugins.transfer.heads, shared by the cached-feature strategies) and
    images through the body while ``transfer(model, data)`` runs on bn_cnn() and digits_target(), and
    the number of training images."""
    import rtk_plugins.transfer.heads as heads

    calls = []
    real = heads.compute_features
    monkeypatch.setattr(heads, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, data = bn_cnn(), digits_target()
    seen = []
    model.body.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    transfer(model, data)
    return len(calls), sum(seen), len(data.train)


def test_mlp_head_caches_features_once(monkeypatch):
    caches, images, n = feature_passes(monkeypatch, lambda model, data: mlp(model, data, epochs=3))
    assert caches == 1 and images == n  # one pass over the images, none per epoch


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
        MLPHead(MLPHeadConfig()).transfer(bn_cnn(), digits_target(), ctx(), CrossEntropy())


# ---------------------------------------------------------------- finetune


def finetune(model, data, **options):
    cfg = build_config(FinetuneConfig, {"epochs": 1, "batch_size": 50, "lr": 0.01, **options})
    return Finetune(cfg).transfer(model, data, ctx())


def test_finetune_frozen_stats_keeps_running_statistics_and_trains_affine():
    model = bn_cnn()
    before = snapshot(model)
    after = snapshot(finetune(model, digits_target(), bn_stats="frozen"))
    stats = bn_buffers("body", before)
    assert len(stats) == 6 and all(torch.equal(before[k], after[k]) for k in stats)
    assert all(changed(before, after, k)[k] for k in bn_affine(model))
    assert all(changed(before, after, "body.0.0").values())


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


# ---------------------------------------------------------------- declared traits


@pytest.mark.parametrize("strategy", ["linear-probe", "mlp-head", "lwf"])
def test_validate_rejects_an_objective_for_a_strategy_that_takes_none(strategy, write_recipe, cli):
    recipe = swapped(f'strategy = "{strategy}"\nepochs = 3') + '\n[transfer.objective]\nname = "pgd-at"\n'
    result = cli("validate", write_recipe(recipe))
    assert result.exit_code != 0
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]  # one line
    assert f'[transfer.objective] strategy "{strategy}" does not train with an objective' in line
    assert "finetune, neft, ranli, retrain-last-k, roli" in line and "linear-probe" not in line.split("takes one")[1]


def test_validate_accepts_an_objective_for_a_strategy_that_takes_one(write_recipe, cli):
    recipe = swapped('strategy = "finetune"\nepochs = 1') + '\n[transfer.objective]\nname = "pgd-at"\nsteps = 1\n'
    result = cli("validate", write_recipe(recipe))
    assert result.exit_code == 0, result.stderr


def test_registry_declares_which_strategies_take_an_objective():
    registry = default_registry()
    takes = {name for name in registry.names("strategy") if registry.get("strategy", name).trait("takes_objective")}
    assert {"finetune", "retrain-last-k", "neft", "roli", "ranli"} <= takes
    assert not takes & {"linear-probe", "mlp-head", "lwf"}


def test_head_init_vocabulary_is_shared_and_uniform01_works_everywhere():
    from rtk.config.schema import HeadInit

    for config in (LinearProbeConfig, RetrainLastKConfig, FinetuneConfig):
        assert typing.get_type_hints(config)["head_init"] == HeadInit
    model = LinearProbe(build_config(LinearProbeConfig, {"epochs": 0, "head_init": "uniform01"})).transfer(
        bn_cnn(), digits_target(), ctx())
    assert model.head.weight.min() >= 0 and model.head.bias.min() >= 0 and model.head.weight.max() < 1


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
    import rtk.stages.evaluate
    import rtk_plugins.transfer.mlp_head as impl

    recipe = write_recipe(swapped('strategy = "mlp-head"\nepochs = 3\nhidden_layers = 2\nwidth = 32\nbatchnorm = true'))
    whole = tmp_path / "whole"
    assert cli("run", recipe, "--out", whole, "--quiet").exit_code == 0
    out = tmp_path / "out"
    real_evaluate = rtk.stages.evaluate.evaluate

    def interrupted(model, data, attacks, *args, **kwargs):
        if attacks:  # the target's evaluation, not the source's clean accuracy
            raise RuntimeError("stopped during evaluation")
        return real_evaluate(model, data, attacks, *args, **kwargs)

    monkeypatch.setattr(rtk.stages.evaluate, "evaluate", interrupted)
    with pytest.raises(RuntimeError, match="stopped during evaluation"):
        Runner(load_recipe(recipe), default_registry(), out, show_progress=False).run()
    assert (out / "checkpoints" / "run-0.safetensors").is_file()
    monkeypatch.setattr(rtk.stages.evaluate, "evaluate", real_evaluate)
    monkeypatch.setattr(impl.MLPHead, "transfer", lambda *a, **k: pytest.fail("trained again"))
    result = cli("run", recipe, "--out", out, "--quiet", "--resume")
    assert result.exit_code == 0, result.stderr
    first, second = (json.loads((d / "results.json").read_text())["runs"][0] for d in (out, whole))
    assert first["metrics"] == second["metrics"]
