"""pgd-at and trades with ``attack_mode = "train"`` craft the inner attack in the modes the training
loop set: BatchNorm layers a transfer strategy froze keep their running statistics through every
attack step; the layers that train update theirs (issue 17, item 5)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rtk.data import DataSplits, ImageSet
from rtk_plugins.cartl import NEFTConfig
from rtk_plugins.cartl.neft import NEFT
from rtk_plugins.models.wrn import wide_resnet
from rtk_plugins.objectives import PGDATConfig, TRADESConfig
from rtk_plugins.objectives.adversarial_training import PGDAdversarialTraining
from rtk_plugins.objectives.trades import TRADES
from rtk_plugins.transfer import FinetuneConfig, RetrainLastKConfig
from rtk_plugins.transfer.batchnorm import bn_layers, train_mode
from rtk_plugins.transfer.finetune import Finetune
from rtk_plugins.transfer.retrain_last_k import RetrainLastK
from tests.helpers import quiet_context

STEPS = 3


def two_block_model() -> nn.Sequential:
    torch.manual_seed(0)
    frozen = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    trained = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(frozen, trained, nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def retrain_last_block(model):
    """retrain-last-k's set_mode: the frozen part in eval, the trained block in train mode."""
    model.eval()
    train_mode(model[1], "batch")


def neft_frozen_part(model):
    """NEFT's set_mode with bn_stats_frozen_part = "frozen": model.train(), then eval on the frozen BN."""
    model.train()
    model[0][1].eval()


def finetune_frozen(model):
    """finetune with bn_stats = "frozen": train mode, every BN in eval."""
    train_mode(model, "frozen")


def objectives():
    return {
        "pgd-at": (PGDAdversarialTraining(PGDATConfig(steps=STEPS, attack_mode="train")), STEPS + 1),
        # trades: the target pass, the steps, then the outer loss's clean and adversarial passes
        "trades": (TRADES(TRADESConfig(steps=STEPS, attack_mode="train")), 1 + STEPS + 2),
    }


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
@pytest.mark.parametrize("set_mode", [retrain_last_block, neft_frozen_part, finetune_frozen],
                         ids=["retrain-last-k", "neft-frozen-part", "finetune-bn-frozen"])
def test_train_mode_attack_leaves_frozen_bn_statistics_alone(one_thread, name, set_mode):
    model = two_block_model()
    set_mode(model)
    modes = [m.training for m in model.modules()]
    frozen = [bn for bn in bn_layers(model) if not bn.training]
    live = [bn for bn in bn_layers(model) if bn.training]
    assert frozen
    before = {id(bn): copy.deepcopy(bn.state_dict()) for bn in bn_layers(model)}
    objective, passes = objectives()[name]
    images, labels = batch()
    loss = objective.loss(model, images, labels)
    assert torch.isfinite(loss)
    for bn in frozen:
        for key, value in bn.state_dict().items():
            assert torch.equal(value, before[id(bn)][key]), key
    for bn in live:  # every attack step and the outer passes ran on batch statistics, updating them
        assert bn.num_batches_tracked.item() == passes
        assert not torch.equal(bn.running_mean, before[id(bn)]["running_mean"])
    assert [m.training for m in model.modules()] == modes  # the strategy's modes, restored


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
def test_eval_mode_attack_still_runs_everything_in_eval(one_thread, name):
    model = two_block_model().train()
    cls, config = (PGDAdversarialTraining, PGDATConfig) if name == "pgd-at" else (TRADES, TRADESConfig)
    cls(config(steps=STEPS, attack_mode="eval")).loss(model, *batch())
    outer = 1 if name == "pgd-at" else 2
    assert all(bn.num_batches_tracked.item() == outer for bn in bn_layers(model)) and model.training


def tiny_wrn_data(n=32, classes=3, size=16):
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.rand(n, 3, size, size, generator=g), torch.arange(n) % classes)
    return DataSplits(train=data, test=data, num_classes=classes)


def running(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
def test_strategies_with_frozen_bn_keep_statistics_under_a_train_mode_attack(one_thread, name):
    """The real strategies, one epoch each: what they freeze keeps the source's statistics."""
    objective = objectives()[name][0]
    data, common = tiny_wrn_data(), dict(epochs=1, batch_size=16, augment="none", lr=0.01)

    torch.manual_seed(0)
    model = wide_resnet(3, 1, 1)
    source = running(model)
    Finetune(FinetuneConfig(bn_stats="frozen", **common)).transfer(model, data, quiet_context(), objective)
    assert all(torch.equal(source[k], v) for k, v in running(model).items())

    torch.manual_seed(0)
    model = wide_resnet(3, 1, 1)  # blocks: 3 units, final, head; k = 2 trains final + head
    RetrainLastK(RetrainLastKConfig(k=2, reinit=False, **common)).transfer(model, data, quiet_context(), objective)
    after = running(model)
    for key, value in after.items():
        assert torch.equal(source[key], value) == (not key.startswith("body.final")), key

    torch.manual_seed(0)
    model = wide_resnet(3, 1, 1)
    NEFT(NEFTConfig(k=2, bn_stats_frozen_part="frozen", **common)).transfer(model, data, quiet_context(), objective)
    after = running(model)
    for key, value in after.items():
        assert torch.equal(source[key], value) == (not key.startswith("body.final")), key
