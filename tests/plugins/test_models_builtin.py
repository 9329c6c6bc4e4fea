"""Built-in architectures (WRN, CIFAR ResNet-18, timm wrapper) obey the model contract.

Imports the plugin modules and rtk.models directly (not the plugin registry). Tiny widths
keep forwards fast; full-size WRNs are built on the meta device, where only shapes exist.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from rtk.config.fields import ConfigValueError, build_config
from rtk.errors import RecipeError, UnknownComponentError, WeightsError
from rtk.models import load_weights, save_weights
from rtk_plugins import models as builtin
from rtk_plugins import timm_models
from rtk_plugins.models.resnet import from_config as resnet18_from_config
from rtk_plugins.models.wrn import from_config as wrn_from_config
from rtk_plugins.timm_models.timm_wrap import from_config as timm_from_config


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network from these tests


TINY_WRNS = {
    "conv": {"depth": 10, "widen": 1},
    "madry-style": {"depth": 8, "widen": 2, "shortcut": "pad", "leaky_relu": 0.1, "input_norm": "per-image",
                    "tf_padding": True, "bn_eps": 1e-3},
    "dropout": {"depth": 10, "widen": 2, "dropout": 0.3},
}


def wrn(table: dict, num_classes: int = 10, cls=builtin.WRNConfig):
    return wrn_from_config(build_config(cls, table), num_classes)


def check_contract(model, num_classes: int, x: torch.Tensor) -> None:
    """Logits/feature shapes, blocks in execution order with the head last, reset_head.

    One forward pass: it is the slow part on a shared 2-core machine.
    """
    model.eval()
    calls, head_inputs = [], []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(model.blocks)]
    hooks.append(model.head.register_forward_hook(lambda m, i, o: head_inputs.append(i[0])))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    (z,) = head_inputs
    assert logits.shape == (x.shape[0], num_classes) and model.num_classes == num_classes
    assert z.shape == (x.shape[0], model.feature_dim)
    assert torch.isfinite(logits).all()
    assert model.blocks[-1] is model.head and len(model.blocks) == len(model.block_names) + 1
    # Deepest last: blocks first run in list order, every one of them runs, the head last.
    first_call = [calls.index(k) for k in range(len(model.blocks))]
    assert first_call == sorted(first_call)
    names = model.block_names
    assert not any(a != b and b.startswith(a + ".") for a in names for b in names), "blocks must not nest"
    model.reset_head(7)
    assert model.num_classes == 7 and model.head(z).shape == (x.shape[0], 7)


def check_roundtrip(make, tmp_path, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    a = make().eval()
    torch.manual_seed(1)
    b = make().eval()
    path = tmp_path / "model.safetensors"
    save_weights(a, path)
    load_weights(b, path)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# --- WRN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY_WRNS))
def test_tiny_wrn_contract(name):
    torch.manual_seed(0)
    model = wrn(TINY_WRNS[name], 10)
    assert model.feature_dim == 64 * TINY_WRNS[name]["widen"]
    check_contract(model, 10, torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("name", sorted(TINY_WRNS))
def test_tiny_wrn_safetensors_roundtrip(name, tmp_path):
    check_roundtrip(lambda: wrn(TINY_WRNS[name], 10), tmp_path, torch.rand(2, 3, 32, 32))


def test_wrn_weight_mismatch_names_keys(tmp_path):
    path = tmp_path / "wrn.safetensors"
    save_weights(wrn(TINY_WRNS["conv"], 10), path)
    with pytest.raises(WeightsError, match=r"shape mismatch: head\.weight"):
        load_weights(wrn(TINY_WRNS["conv"], 5), path)
    with pytest.raises(WeightsError, match=r"missing keys: body\.block1\.layer\.1"):
        load_weights(wrn({"depth": 16, "widen": 1}, 10), path)


@pytest.mark.parametrize("cls,blocks,params", [
    (builtin.WRN32x10Config, 17, None),        # Madry: 15 units + final + head (Shafahi's 17 blocks)
    (builtin.WRN28x10Config, 14, 36_479_194),  # 12 units + final + head; the published WRN-28-10 size
    (builtin.WRN34x10Config, 17, 46_160_474),  # the published WRN-34-10 size (TRADES)
])
def test_wrn_presets_block_counts(cls, blocks, params):
    with torch.device("meta"):  # full width without allocating or initialising 46M weights
        model = wrn_from_config(cls(), 10)
    assert len(model.blocks) == blocks
    assert model.feature_dim == 640
    assert model.block_names[-1] == "body.final" and model.block_names[0] == "body.block1.layer.0"
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_wrn_32_10_is_madrys_model():
    from torch import nn

    from rtk_plugins.models.wrn import PerImageStandardize, TFSameConv2d, WideBasic

    with torch.device("meta"):
        model = wrn_from_config(builtin.WRN32x10Config(), 10)
    units = [m for m in model.modules() if isinstance(m, WideBasic)]
    assert len(units) == 15 and all(len(getattr(model.body, f"block{s}").layer) == 5 for s in (1, 2, 3))
    assert [u.conv2.out_channels for u in units[::5]] == [160, 320, 640]
    assert all(u.convShortcut is None for u in units)  # avg-pool + zero-pad shortcuts only
    assert [u.activate_before_residual for u in units] == [True] + [False] * 14
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert sum(isinstance(m, TFSameConv2d) for m in model.modules()) == 2  # the two stride-2 convs
    assert isinstance(model.preprocess, PerImageStandardize)


def test_wrn_depth_to_units_mapping():
    assert builtin.wrn_units_per_stage(28, "conv") == 4
    assert builtin.wrn_units_per_stage(34, "conv") == 5
    assert builtin.wrn_units_per_stage(32, "pad") == 5
    with pytest.raises(ConfigValueError, match="depth 30"):
        build_config(builtin.WRNConfig, {"depth": 30})
    with pytest.raises(ConfigValueError, match="6n\\+2"):
        build_config(builtin.WRNConfig, {"depth": 34, "shortcut": "pad"})


def test_pad_shortcut_pools_then_pads_channels_evenly():
    from rtk_plugins.models.wrn import WideBasic

    unit = WideBasic(4, 12, 2, slope=0.1, dropout=0.0, shortcut="pad", activate_before_residual=False,
                     tf_padding=True, bn_eps=1e-3)
    x = torch.rand(1, 4, 8, 8)
    out = unit._shortcut(x)
    assert out.shape == (1, 12, 4, 4)
    assert torch.allclose(out[:, 4:8], F.avg_pool2d(x, 2))
    assert out[:, :4].abs().sum() == 0 and out[:, 8:].abs().sum() == 0


def test_tf_same_padding_pads_bottom_right_at_stride_2():
    from rtk_plugins.models.wrn import TFSameConv2d

    conv = TFSameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2, 2] = 1.0
    # TF windows start at rows/cols 0 and 2, so all four outputs see pixel (2, 2);
    # PyTorch's symmetric padding=1 windows start at -1 and 1: only output (1, 1) would.
    assert torch.equal(conv(x), torch.ones(1, 1, 2, 2))


def test_per_image_standardization_matches_tensorflow():
    from rtk_plugins.models.wrn import PerImageStandardize

    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x[1] = 0.5  # constant image: TF floors the std at 1/sqrt(N)
    x.requires_grad_(True)
    y = PerImageStandardize()(x)
    pixels = x.detach() * 255
    n = pixels[0].numel()
    for i in range(2):
        std = max(pixels[i].std(unbiased=False).item(), n ** -0.5)
        assert torch.allclose(y[i], (pixels[i] - pixels[i].mean()) / std)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# --- ResNet-18 ---------------------------------------------------------------------------


def test_resnet18_contract_and_blocks():
    torch.manual_seed(0)
    model = resnet18_from_config(builtin.ResNet18Config(), 10)
    assert model.feature_dim == 512 and len(model.blocks) == 10
    assert model.block_names[-1] == "body.pool"
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the usual CIFAR ResNet-18 size
    check_contract(model, 10, torch.rand(2, 3, 32, 32))


def test_resnet18_safetensors_roundtrip(tmp_path):
    # 16x16 inputs (the pool is adaptive) keep this fast; the weights are what is tested.
    check_roundtrip(lambda: resnet18_from_config(builtin.ResNet18Config(), 10), tmp_path, torch.rand(1, 3, 16, 16))


# --- registration and import cost ---------------------------------------------------------


def test_plugins_register_models_and_import_without_torch():
    names = {}
    for module in (builtin, timm_models):
        module.register_source_models(
            lambda name, factory, config=None, summary="", replace=False: names.setdefault(name, config))
    assert set(names) == {"small-cnn", "wrn", "wrn-28-10", "wrn-32-10", "wrn-34-10", "resnet18", "timm/*"}
    code = ("import sys, rtk_plugins.models, rtk_plugins.timm_models; "
            "sys.exit('torch' in sys.modules or 'timm' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode == 0


# --- timm ----------------------------------------------------------------------------------


def timm(variant: str, num_classes: int = 5, **options):
    return timm_from_config(build_config(timm_models.TimmConfig, options), num_classes, variant=variant)


def timm_state(model) -> dict[str, torch.Tensor]:
    """The timm-format state dict (original key names, classifier "fc") of a wrapped resnet18."""
    prefix = "body.model."
    state = {k[len(prefix):]: v.contiguous() for k, v in model.state_dict().items() if k.startswith(prefix)}
    state["fc.weight"], state["fc.bias"] = model.head.weight.detach(), model.head.bias.detach()
    return state


def test_timm_resnet18_contract():
    torch.manual_seed(0)
    model = timm("resnet18", 5, input_size=32)
    assert model.feature_dim == 512
    assert model.block_names == [f"body.model.layer{s}.{i}" for s in (1, 2, 3, 4) for i in (0, 1)]
    check_contract(model, 5, torch.rand(2, 3, 32, 32))


def test_timm_vit_blocks_from_timm_grouping():
    torch.manual_seed(0)
    model = timm("vit_tiny_patch16_224", 3, input_size=32)
    assert model.feature_dim == 192
    assert model.block_names == [f"body.model.blocks.{i}" for i in range(12)] + ["body.model.norm"]
    check_contract(model, 3, torch.rand(2, 3, 40, 40))  # resized to 32 inside the model


def test_timm_swin_blocks_from_timm_grouping():
    model = timm("swin_tiny_patch4_window7_224", 3, input_size=32)
    names = [n[len("body.model."):] for n in model.block_names]
    # Each later stage starts with its patch merging, grouped by timm with the stage's first block.
    expected = []
    for stage, depth in enumerate((2, 2, 6, 2)):
        expected += [f"layers.{stage}.downsample"] if stage else []
        expected += [f"layers.{stage}.blocks.{i}" for i in range(depth)]
    assert names == expected + ["norm"] and len(model.blocks) == 17
    assert model.feature_dim == 768


def test_timm_local_weights_roundtrip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm("resnet18", 5, input_size=32).eval()
    path = tmp_path / "resnet18.safetensors"
    save_file(timm_state(source), str(path))
    rtk_file = tmp_path / "rtk.safetensors"  # a file written by rtk itself also loads
    save_weights(source, rtk_file)
    other = timm("resnet18", 3, input_size=32, timm_weights=str(path))
    assert other.head.out_features == 3  # class count differs: fresh head, same body
    assert all(torch.equal(a, b) for a, b in zip(other.body.state_dict().values(), source.body.state_dict().values()))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
        # The head is copied.
        assert torch.equal(timm("resnet18", 5, input_size=32, timm_weights=str(path)).eval()(x), expected)
        assert torch.equal(timm("resnet18", 5, input_size=32, timm_weights=str(rtk_file)).eval()(x), expected)


def test_timm_weights_mismatch_names_keys(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(timm_state(timm("resnet18", 5, input_size=32)), str(path))
    with pytest.raises(WeightsError, match=r"resnet34.*layer1\.2\.conv1\.weight"):
        timm("resnet34", 5, input_size=32, timm_weights=str(path))


def test_timm_pretrained_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine has
    start = time.monotonic()
    with pytest.raises(WeightsError, match='weights = "path') as info:
        timm("resnet18", 5, pretrained=True)
    assert time.monotonic() - start < 5
    assert "\n" not in str(info.value)


def test_timm_pretrained_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from rtk_plugins.timm_models import timm_wrap

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(timm_wrap, "_hub_endpoint", lambda: "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(WeightsError, match="unreachable"):
        timm("resnet18", 5, pretrained=True)
    assert time.monotonic() - start < 5


def test_timm_unknown_names():
    with pytest.raises(UnknownComponentError, match="timm/resnet18"):
        timm("resnet1888")
    with pytest.raises(UnknownComponentError, match="a1_in1k"):
        timm("resnet18.no_such_tag")
    with pytest.raises(UnknownComponentError, match="timm/resnet18"):
        timm_from_config(timm_models.TimmConfig(), 5, variant=None)


def test_timm_options():
    model = timm("resnet18", 2, input_size=32, in_chans=1)  # pretrained_cfg stats averaged to 1 channel
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    assert timm("resnet18", 2).preprocess[0].size == (224, 224)  # default: the pretrained_cfg input size
    with pytest.raises(ConfigValueError, match="mean and std"):
        build_config(timm_models.TimmConfig, {"mean": [0.5, 0.5, 0.5]})
    with pytest.raises(RecipeError, match="drop_path_rat"):
        timm("resnet18", 2, model_args={"drop_path_rat": 0.1})
