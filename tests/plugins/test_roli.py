"""RoLI / RanLI: variants and their trainable parameters, LoRA and adapter inits, stage 2 from
stage 1's selected head, rebuild for resume, and recipes/roli_cifar.toml."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import quiet_context
from rtk.data import DataSplits, ImageSet
from rtk.errors import RtkError
from rtk_plugins.roli.strategy import RoLI
from rtk_plugins.timm_models.timm_wrap import timm_model
from rtk_plugins.roli import RanLIConfig, RoLIConfig

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "roli_cifar.toml"
DIM, DEPTH, CLASSES = 32, 2, 3


def tiny_vit(classes=CLASSES):
    torch.manual_seed(0)
    return timm_model("vit_tiny_patch16_224", classes, input_size=16,
                      model_args=dict(patch_size=8, depth=DEPTH, embed_dim=DIM, num_heads=2))


def tiny_swin(classes=CLASSES):
    torch.manual_seed(0)
    return timm_model("swin_tiny_patch4_window7_224", classes, input_size=16,
                      model_args=dict(window_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2)))


def tiny_data(n=24, val=12):
    g = torch.Generator().manual_seed(1)
    make = lambda m: ImageSet(torch.rand(m, 3, 16, 16, generator=g), torch.arange(m) % CLASSES)  # noqa: E731
    return DataSplits(train=make(n), test=make(n), val=make(val) if val else None, num_classes=CLASSES)


def ctx():
    return quiet_context()


def test_variant_parameter_counts_match_hand_counts_vit():
    head = DIM * CLASSES + CLASSES
    lora = DEPTH * 2 * (16 * DIM + DIM * 16)  # q and v: A (r x dim) + B (dim x r) per block
    for variant, expected in [
        ("linear", head),
        ("lora", lora + head),
        ("adapter", DEPTH * ((DIM * (DIM // 8) + DIM // 8) + (DIM // 8 * DIM + DIM)) + head),
        # ViT-tiny per block: norm1, qkv, proj, norm2, fc1, fc2 biases; + patch embed + final norm.
        ("bias", DEPTH * (DIM + 3 * DIM + DIM + DIM + 4 * DIM + DIM) + DIM + DIM + head),
    ]:
        model = tiny_vit()
        strategy = RoLI(RanLIConfig(variant=variant), robust_init=False)
        params = strategy._install_variant(model)
        assert sum(p.numel() for p in params) == expected, variant
    full = tiny_vit()
    assert sum(p.numel() for p in RoLI(RanLIConfig(variant="full"), False)._install_variant(full)) == \
        sum(p.numel() for p in full.parameters())


def test_variant_parameter_counts_swin():
    model = tiny_swin()
    dims = [16, 32]
    params = RoLI(RanLIConfig(variant="lora", lora_rank=4), False)._install_variant(model)
    assert sum(p.numel() for p in params) == sum(2 * (4 * d + d * 4) for d in dims) + 32 * CLASSES + CLASSES
    model = tiny_swin()
    tables = sum(m.relative_position_bias_table.numel() for m in model.modules()
                 if hasattr(m, "relative_position_bias_table"))
    by_name = RoLI(RanLIConfig(variant="bias"), False)._install_variant(model)
    only_bias = RoLI(RanLIConfig(variant="bias", bias_params="bias"), False)._install_variant(tiny_swin())
    assert tables > 0
    assert sum(p.numel() for p in by_name) - sum(p.numel() for p in only_bias) == tables


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_lora_standard_init_keeps_the_output_and_trains(one_thread, make):
    model = make().eval()
    x = torch.rand(4, 3, 16, 16)
    before = model(x)
    strategy = RoLI(RanLIConfig(variant="lora", lora_dropout=0.0), False)
    params = strategy._install_variant(model)
    assert torch.allclose(model(x), before, atol=1e-6)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=0.5)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if ".lora." in n]
    assert lora_grads and any(g.abs().sum() > 0 for g in lora_grads)
    optimizer.step()
    assert not torch.allclose(model(x), before, atol=1e-4)


def test_zero_inits_reproduce_the_code_stuck_lora():
    model = tiny_vit().eval()
    RoLI(RanLIConfig(variant="lora", lora_init="zero"), False)._install_variant(model)
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if ".lora." in n)


def test_adapter_standard_init_keeps_the_output():
    model = tiny_vit().eval()
    x = torch.rand(2, 3, 16, 16)
    before = model(x)
    RoLI(RanLIConfig(variant="adapter"), False)._install_variant(model)
    assert torch.allclose(model(x), before, atol=1e-6)


def _tiny_roli(**options):
    base = dict(variant="lora", epochs=1, probe_epochs=2, batch_size=12, warmup_epochs=1, steps=1, val_steps=1, lr=1e-3)
    return RoLIConfig(**{**base, **options})


def test_roli_stage2_starts_from_exactly_the_selected_probe_head(one_thread):
    strategy = RoLI(_tiny_roli(), robust_init=True)
    model = strategy.transfer(tiny_vit(), tiny_data(), ctx())
    probe = strategy.probe
    assert len(probe.scores) == 2
    # the code's rule: strictly better than every earlier epoch and than 0 (else the last epoch stays)
    assert probe.best_epoch == (max(range(2), key=lambda e: (probe.scores[e], -e)) if max(probe.scores) > 0 else -1)
    assert probe.best_head is not None, "the tiny probe should reach some validation robust accuracy"
    for key, value in probe.best_head.items():
        assert torch.equal(strategy.initial_head[key], value)
    # the probe moved the head away from its random start, and stage 2 moved it on
    assert not torch.allclose(strategy.initial_head["bias"], torch.full((CLASSES,), -4.59512))
    assert not torch.equal(model.head.weight, strategy.initial_head["weight"])


def test_roli_needs_a_validation_split():
    with pytest.raises(RtkError, match="val_fraction"):
        RoLI(_tiny_roli(), robust_init=True).transfer(tiny_vit(), tiny_data(val=0), ctx())


@pytest.mark.parametrize("variant", ["lora", "adapter"])
def test_rebuild_recreates_the_architecture_for_resume(one_thread, variant):
    cfg = RanLIConfig(variant=variant, epochs=1, batch_size=12, warmup_epochs=0.5, steps=1)
    trained = RoLI(cfg, robust_init=False).transfer(tiny_vit(), tiny_data(), ctx())
    fresh = RoLI(cfg, robust_init=False).rebuild(tiny_vit(classes=7), CLASSES)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(fresh.eval()(x), trained.eval()(x))


def test_warmup_then_cosine_factor():
    from rtk.stages.training import make_schedule

    cfg = RanLIConfig(epochs=4, warmup_epochs=2, schedule="cosine")
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    factors = [make_schedule(optimizer, cfg, steps_per_epoch=5).lr_lambdas[0](s) for s in range(21)]
    f = factors.__getitem__
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # the first step trains
    assert f(10) == pytest.approx(1.0) and f(15) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)


@pytest.mark.parametrize("profile", [None, "smoke"])
def test_roli_recipe_validates(cli, tmp_path, profile):
    # The full recipe imports the ARES Swin-B; a converted weights file takes its place; the smoke profile unsets it.
    weights = tmp_path / "ares.safetensors"
    weights.touch()
    args = ["validate", RECIPE] + (["--profile", profile] if profile else ["--set", f'source.weights="{weights}"'])
    result = cli(*args)
    assert result.exit_code == 0, result.output


def test_roli_recipe_smoke_runs(cli, tmp_path, one_thread):
    result = cli("run", RECIPE, "--profile", "smoke", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "results.json").is_file()


def test_fine_tuning_rates_default_to_each_methods_own():
    from rtk.config.fields import build_config

    # DongXzz/RoLI train.py:38 trains at BASE_LR * batch / 256 = BASE_LR / 4: RanLI fine-tunes at BASE_LR 5e-4
    # on every dataset, RoLI's full fine-tuning on CIFAR at 1e-4, RanLI-Linear (stage 1) on CIFAR-10 at 0.05.
    assert build_config(RanLIConfig, {}).lr == 5e-4 / 4 and build_config(RoLIConfig, {}).lr == 1e-4 / 4
    assert build_config(RoLIConfig, {}).probe_lr == 0.05 / 4


def test_recipe_rates_are_the_codes_cifar10_base_lrs_over_four():
    from rtk.config.recipe import load_recipe

    base_lr = {("ranli", "full"): 5e-4, ("roli", "full"): 1e-4, ("ranli", "bias"): 5e-3, ("roli", "bias"): 5e-3,
               ("ranli", "lora"): 0.01, ("roli", "lora"): 1e-3, ("ranli", "adapter"): 0.05,
               ("roli", "adapter"): 0.05, ("ranli", "linear"): 0.05}  # configs/<variant>/cifar10_<method>.yaml
    sweep = load_recipe(RECIPE).raw["sweep"]["transfer"]
    assert {(t["strategy"], t["variant"]): t["lr"] for t in sweep} == pytest.approx(
        {key: lr * 64 / 256 for key, lr in base_lr.items()})
