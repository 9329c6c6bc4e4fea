"""CARTL: the cartl-fdm objective, the neft strategy, and recipes/cartl_cifar.toml."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import quiet_context
from rtk.data import DataSplits, ImageSet
from rtk.errors import RtkError
from rtk_plugins.cartl.fdm import FeatureDistanceMinimization
from rtk_plugins.cartl.neft import NEFT, ConvexWideBasic, constrained_layers
from rtk_plugins.attacks.pgd import torchattacks_pgd
from rtk_plugins.models.wrn import wide_resnet
from rtk_plugins.cartl import CARTLFDMConfig, NEFTConfig

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "cartl_cifar.toml"


def tiny_wrn(classes=3, units=1):
    torch.manual_seed(0)
    return wide_resnet(classes, units, 1)  # blocks: units*3 residual units + final + head


def tiny_data(n=48, classes=3, size=16):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, size, size, generator=g)
    labels = torch.arange(n) % classes
    data = ImageSet(images, labels)
    return DataSplits(train=data, test=data, num_classes=classes)


def ctx():
    return quiet_context()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fdm_loss_is_adversarial_ce_plus_feature_distance_at_block_k(one_thread, reduction):
    model = tiny_wrn()
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = CARTLFDMConfig(k=3, lam=0.7, steps=2, random_start=False, reduction=reduction)
    reference = copy.deepcopy(model)  # the loss's train-mode passes move BN running statistics
    model.train()
    loss = FeatureDistanceMinimization(cfg).loss(model, images, labels)

    model = reference
    model.eval()
    adversarial = torchattacks_pgd(model, "Linf", cfg.eps, cfg.alpha, cfg.steps, False)(images, labels)
    model.train()
    block = model.blocks[-3]  # the input of block T-k+1 = the output of what stays frozen
    seen = []
    hook = block.register_forward_hook(lambda m, i, o: seen.append(i[0].flatten(1)))
    logits = model(adversarial)
    model(images)
    hook.remove()
    per_example = (seen[0] - seen[1]).norm(dim=1) / math.sqrt(seen[0].shape[1])
    distance = per_example.sum() if reduction == "sum" else per_example.mean()
    expected = nn.functional.cross_entropy(logits, labels) + 0.7 * distance
    assert distance > 0
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_fdm_rejects_k_beyond_the_blocks(one_thread):
    model = tiny_wrn()
    with pytest.raises(RtkError, match="k = 9"):
        FeatureDistanceMinimization(CARTLFDMConfig(k=9, steps=1)).loss(model, torch.rand(2, 3, 16, 16),
                                                                      torch.tensor([0, 1]))


def test_convex_unit_halves_the_residual_sum():
    model = tiny_wrn()
    unit = model.blocks[1]
    x = torch.randn(2, 16, 16, 16)
    unit.eval()
    plain = unit(x.clone())
    unit.__class__ = ConvexWideBasic
    assert torch.allclose(unit(x.clone()), 0.5 * plain, atol=1e-6)


def _spectral(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).double(), ord=2).item()


def test_neft_folded_layers_have_spectral_norm_at_most_beta(one_thread):
    model = tiny_wrn()
    source = copy.deepcopy(model)
    cfg = NEFTConfig(epochs=3, batch_size=16, k=4, beta=0.4, augment="none", lr=0.05)
    out = NEFT(cfg).transfer(model, tiny_data(), ctx())
    assert not any("parametrizations" in k for k in out.state_dict())  # folded: an ordinary model
    layers = constrained_layers(out, 4)
    assert len(layers) == 7  # 2 units x (conv1, conv2, convShortcut) + head
    for layer in layers:
        assert _spectral(layer.weight) <= 0.4 * (1 + 1e-3)
        assert _spectral(layer.weight) >= 0.4 * 0.9  # normalised, not merely shrunk
    # Frozen part untouched; BN affine parameters frozen (--freeze-bn) even in trained blocks.
    before, after = source.state_dict(), out.state_dict()
    assert torch.equal(before["body.conv1.weight"], after["body.conv1.weight"])
    assert torch.equal(before["body.block1.layer.0.conv1.weight"], after["body.block1.layer.0.conv1.weight"])
    assert torch.equal(before["body.block3.layer.0.bn1.weight"], after["body.block3.layer.0.bn1.weight"])
    # bn_stats_frozen_part = "batch" (the NEFT script): frozen blocks' running statistics moved.
    key = "body.block1.layer.0.bn1.running_mean"
    assert not torch.equal(before[key], after[key])


def test_neft_frozen_statistics_option_keeps_source_statistics(one_thread):
    model = tiny_wrn()
    source = copy.deepcopy(model)
    cfg = NEFTConfig(epochs=1, batch_size=16, k=2, augment="none", bn_stats_frozen_part="frozen",
                     bn_stats="frozen", bn_affine_trainable=True)
    out = NEFT(cfg).transfer(model, tiny_data(), ctx())
    before, after = source.state_dict(), out.state_dict()
    for key in before:
        if "running" in key:
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["body.final.0.weight"], after["body.final.0.weight"])  # affine trained


def test_neft_rebuild_recreates_the_folded_architecture(one_thread):
    cfg = NEFTConfig(epochs=1, batch_size=16, k=3, augment="none")
    data = tiny_data()
    out = NEFT(cfg).transfer(tiny_wrn(), data, ctx())
    fresh = NEFT(cfg).rebuild(wide_resnet(7, 1, 1), data.num_classes)
    fresh.load_state_dict(out.state_dict(), strict=True)
    fresh.eval()
    x = torch.rand(4, 3, 16, 16)
    assert isinstance(fresh.blocks[-3], ConvexWideBasic)
    assert torch.equal(fresh(x), out(x))


def test_neft_head_init_uniform01_and_convex_error_for_other_models(one_thread):
    from rtk_plugins.models.small_cnn import small_cnn

    strategy = NEFT(NEFTConfig(k=2))
    model = strategy.rebuild(tiny_wrn(), 5)
    assert model.head.weight.min() >= 0 and model.head.weight.max() < 1 and model.head.bias.min() >= 0
    cnn = small_cnn(3, [8], 16, 1, [0.5], [0.5])
    with pytest.raises(RtkError, match="convex_residual = false"):
        strategy.rebuild(cnn, 3)


@pytest.mark.parametrize("profile", [None, "smoke"])
def test_cartl_recipe_validates(cli, profile):
    args = ["validate", RECIPE] + (["--profile", profile] if profile else [])
    result = cli(*args)
    assert result.exit_code == 0, result.output + (result.stderr if result.stderr_bytes else "")


def test_cartl_recipe_smoke_runs(cli, tmp_path, one_thread):
    result = cli("run", RECIPE, "--profile", "smoke", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "results.json").is_file()


def test_cartl_recipe_pairs_each_source_with_its_transfer():
    from rtk.config.recipe import load_recipe

    points = load_recipe(RECIPE).points()
    runs = {p.id: (p.raw["source"]["objective"], p.raw["transfer"]) for p in points}
    assert len(runs) == 10
    for k in (4, 6, 8):
        fdm, neft = runs[f"cartl-k{k}"]
        assert (fdm["name"], fdm["k"], neft["strategy"], neft["k"]) == ("cartl-fdm", k, "neft", k)
        source, plain = runs[f"plain-tl-k{k}"]
        assert source["name"] == "pgd-at" and plain["k"] == k
        assert not plain["reinit"] and not plain["bn_affine_trainable"]
    assert runs["lwf"][0]["name"] == "pgd-at"
    assert len({str(objective) for objective, _ in runs.values()}) == 4  # one PGD-AT source, one FDM source per k
