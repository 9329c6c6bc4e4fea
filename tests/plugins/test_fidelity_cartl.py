"""CARTL against NISP-official/CARTL (issue 17, items 8 and 12): the ResNet-18 block mapping, the
layers NEFT bounds on a ResNet-18, and the plain transfer baseline's head in recipes/cartl_cifar.toml."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rtk.data import DataSplits, ImageSet
from rtk_plugins.cartl import NEFTConfig
from rtk_plugins.cartl.neft import NEFT, constrained_layers
from rtk_plugins.models.resnet import BasicBlock, resnet18
from rtk_plugins.models.wrn import wide_resnet
from tests.helpers import quiet_context

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "cartl_cifar.toml"


def rtk_resnet18(classes=3):
    torch.manual_seed(0)
    return resnet18(classes, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def cartl_resnet18_block(model, number: int) -> nn.Module:
    """What CARTL's ResnetBlocks(model).block{number} is (src/networks/utils.py): 1-8 the
    BasicBlocks in order (conv2_x[0] ... conv5_x[1]), 9 the FC."""
    units = [m for m in model.modules() if isinstance(m, BasicBlock)]
    return units[number - 1] if number <= 8 else model.head


def test_resnet18_rtk_k_is_cartl_k_plus_one():
    model = rtk_resnet18()
    total = 9  # CARTL's ResNet-18: 8 BasicBlocks + FC
    assert len(model.blocks) == total + 1  # rtk: + the parameter-free pool block
    assert model.blocks[-1] is cartl_resnet18_block(model, 9)  # k = 1: the FC alone in both
    for cartl_k in range(2, total + 1):
        # cartl-fdm's feature: CARTL hooks the input of block{total - k + 1}; neft trains blocks total-k+1 .. total
        assert model.blocks[-(cartl_k + 1)] is cartl_resnet18_block(model, total - cartl_k + 1), cartl_k
        trained = [b for b in model.blocks[len(model.blocks) - (cartl_k + 1):] if any(True for _ in b.parameters())]
        expected = [cartl_resnet18_block(model, n) for n in range(total - cartl_k + 1, total + 1)]
        assert trained == expected, cartl_k


def test_neft_bounds_only_the_fc_of_a_resnet18_as_cartl_does():
    model = rtk_resnet18()
    assert constrained_layers(model, 4) == [model.head]  # layer4.0 + layer4.1 + pool + head
    every = constrained_layers(model, 4, "all")
    convs = [m for name in ("layer4.0", "layer4.1") for m in model.body.get_submodule(name).modules()
             if isinstance(m, nn.Conv2d)]
    assert every == convs + [model.head] and len(convs) == 5  # 2 + 2 convs + the 1x1 shortcut conv


def test_neft_layer_choice_is_the_same_on_wrn_units():
    torch.manual_seed(0)
    model = wide_resnet(3, 1, 1)
    assert constrained_layers(model, 4) == constrained_layers(model, 4, "all")
    assert len(constrained_layers(model, 4)) == 7  # 2 units x (conv1, conv2, convShortcut) + head


def _spectral(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).double(), ord=2).item()


@pytest.mark.parametrize("which", ["code", "all"])
def test_neft_on_resnet18_folds_the_chosen_layers_to_beta(one_thread, which):
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.rand(16, 3, 8, 8, generator=g), torch.arange(16) % 3)
    model = rtk_resnet18()
    source_conv = model.body.layer4[1].conv2.weight.detach().clone()
    cfg = NEFTConfig(epochs=1, batch_size=8, k=3, beta=0.4, augment="none", lr=0.01, spectral_layers=which)
    out = NEFT(cfg).transfer(model, DataSplits(train=data, test=data, num_classes=3), quiet_context())
    assert not any("parametrizations" in k for k in out.state_dict())
    assert _spectral(out.head.weight) == pytest.approx(0.4, rel=1e-3)
    conv = out.body.layer4[1].conv2.weight
    if which == "all":
        assert _spectral(conv) == pytest.approx(0.4, rel=1e-3)
    else:  # trained, but not re-parameterised
        assert not torch.equal(conv, source_conv)
        assert _spectral(conv) == pytest.approx(_spectral(source_conv), rel=0.2)


def test_cartl_recipe_plain_baseline_gets_cartls_uniform01_head():
    from rtk.config.recipe import load_recipe
    from rtk.config.spec import resolve
    from rtk.registry import default_registry

    specs = {s.id: s for s in resolve(load_recipe(RECIPE), default_registry())}
    for k in (4, 6, 8):
        plain, neft = specs[f"plain-tl-k{k}"].transfer.config, specs[f"cartl-k{k}"].transfer.config
        assert plain.head_init == neft.head_init == "uniform01"
    raw = specs["plain-tl-k4"].raw  # 100 source classes, 10 target ones: retrain-last-k resets the head
    assert (raw["source"]["data"]["dataset"], raw["target"]["dataset"]) == ("cifar100", "cifar10")
