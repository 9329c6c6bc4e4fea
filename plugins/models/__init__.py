"""Built-in architectures: a small CNN for digits/MNIST, CIFAR-style WRN and ResNet-18.

WRN depth follows each source's naming, so ``depth`` maps to units per stage n by shortcut:

- ``shortcut = "conv"``: depth = 6n + 4 (Zagoruyko & Komodakis, arXiv:1605.07146):
  WRN-28-10 has n = 4, WRN-34-10 has n = 5.
- ``shortcut = "pad"``: depth = 6n + 2 (init conv + 6n convs + FC; the pad shortcut has no
  weights): Madry et al.'s "WRN-32-10" (arXiv:1706.06083) has n = 5, i.e. the unit count
  of WRN-34-10.

Presets (all built by the ``wrn`` factory; only their defaults differ, any option can be set):

- ``wrn-28-10``: 4 units per stage, widths 160/320/640, ReLU, 1x1-conv shortcuts, CIFAR-10
  mean/std normalization (the TRADES WRN-28-10). 12 units + final + head = 14 blocks.
- ``wrn-34-10``: the same with 5 units per stage (TRADES / CARTL WRN-34-10; CARTL sets
  ``leaky_relu = 0.1``). 17 blocks.
- ``wrn-32-10``: Madry's cifar10_challenge model: 5 units per stage, leaky ReLU 0.1,
  avg-pool + zero-pad shortcuts, per-image standardisation, TensorFlow "SAME" padding and
  BN epsilon 1e-3 (TF's default), so weights converted from the TF checkpoints behave as in
  TF. 15 units + final + head = 17 blocks (Shafahi et al.'s count).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import option

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2471, 0.2435, 0.2616]


@dataclass
class SmallCNNConfig:
    """Options of the small CNN (digits, MNIST): rtk's own test network, conv stages of
    conv3x3 + ReLU + max-pool 2, then a fully connected layer to the features and a linear head."""

    channels: list[int] = option(default_factory=lambda: [16, 32, 64], help=(
        "width of each conv stage (conv3x3, ReLU, max-pool 2)"))
    feature_dim: int = option(256, min=1, help="width of the penultimate layer (the features z)")
    in_channels: int = option(1, min=1, help="image channels")
    mean: list[float] = option(default_factory=lambda: [0.5], help=(
        "per-channel normalization mean, applied inside the model"))
    std: list[float] = option(default_factory=lambda: [0.5], help=(
        "per-channel normalization std, applied inside the model"))


def wrn_units_per_stage(depth: int, shortcut: str) -> int:
    """Residual units per stage for a WRN ``depth`` (6n+4 with conv shortcuts, 6n+2 with pad)."""
    extra = 4 if shortcut == "conv" else 2
    units, rest = divmod(depth - extra, 6)
    if rest or units < 1:
        valid = ", ".join(str(6 * n + extra) for n in range(1, 6))
        raise ValueError(f'WRN depth {depth} is not 6n+{extra} as shortcut "{shortcut}" needs; use one of {valid}, ...')
    return units


def _check_mean_std(mean: list[float], std: list[float]) -> None:
    if len(mean) != len(std) or not mean:
        raise ValueError(f"mean and std must have one entry per channel, got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std entries must be positive, got {std}")


@dataclass
class WRNConfig:
    """Options of the CIFAR-style pre-activation Wide ResNet (Zagoruyko & Komodakis, "Wide
    Residual Networks", arXiv:1605.07146; defaults: WRN-28-10). Layout and module names follow
    the PyTorch WRN of yaodongyu/TRADES models/wideresnet.py; ``shortcut = "pad"`` and the TF
    options follow MadryLab/cifar10_challenge model.py."""

    depth: int = option(28, min=6, help=(
        '6n+4 with shortcut "conv" (28 -> 4 units per stage), 6n+2 with "pad" (32 -> 5)'))
    widen: int = option(10, min=1, help="width factor k: stage widths 16k, 32k, 64k (features z are 64k-d)")
    leaky_relu: float = option(0.0, min=0.0, help="negative slope of every activation; 0 is ReLU, Madry uses 0.1")
    shortcut: Literal["conv", "pad"] = option("conv", help=(
        '"conv": 1x1 conv when the shape changes (PyTorch WRN); "pad": avg-pool + zero-pad channels (Madry)'))
    dropout: float = option(0.0, min=0.0, max=0.99, help="dropout between the two convs of each unit")
    mean: list[float] = option(default_factory=lambda: list(CIFAR10_MEAN), help=(
        'per-channel normalization mean inside the model (input_norm = "mean-std")'))
    std: list[float] = option(default_factory=lambda: list(CIFAR10_STD), help=(
        'per-channel normalization std inside the model (input_norm = "mean-std")'))
    input_norm: Literal["mean-std", "per-image"] = option("mean-std", help=(
        '"mean-std", or "per-image": tf.image.per_image_standardization as in Madry\'s model'))
    tf_padding: bool = option(False, help=(
        'TensorFlow "SAME" padding in strided convs (pads bottom/right only), for weights converted from TF'))
    bn_eps: float = option(1e-5, min=0.0, help="BatchNorm epsilon (PyTorch 1e-5; TF's batch_norm, used by Madry, 1e-3)")

    def __post_init__(self):
        wrn_units_per_stage(self.depth, self.shortcut)
        _check_mean_std(self.mean, self.std)


def _default(name: str, value):
    """Re-declare a WRNConfig field with a preset default, keeping its documentation and range."""
    base = WRNConfig.__dataclass_fields__[name]
    if isinstance(value, list):
        return dataclasses.field(default_factory=lambda: list(value), metadata=base.metadata)
    return dataclasses.field(default=value, metadata=base.metadata)


@dataclass
class WRN28x10Config(WRNConfig):
    """WRN-28-10 as in TRADES (Zhang et al., "Theoretically Principled Trade-off between
    Robustness and Accuracy", arXiv:1901.08573; code yaodongyu/TRADES models/wideresnet.py):
    4 units per stage, ReLU, 1x1-conv shortcuts."""


@dataclass
class WRN34x10Config(WRNConfig):
    """WRN-34-10 as in TRADES (arXiv:1901.08573; yaodongyu/TRADES models/wideresnet.py) and
    CARTL (Chen et al., "CARTL: Cooperative Adversarially-Robust Transfer Learning",
    arXiv:2106.06667; NISP-official/CARTL src/networks/wrn.py, whose activations are
    LeakyReLU(0.1): set ``leaky_relu = 0.1``): 5 units per stage, ReLU, 1x1-conv shortcuts."""

    depth: int = _default("depth", 34)


@dataclass
class WRN32x10Config(WRNConfig):
    """Madry et al.'s "WRN-32-10" ("Towards Deep Learning Models Resistant to Adversarial
    Attacks", arXiv:1706.06083; code MadryLab/cifar10_challenge model.py): 5 units per stage,
    leaky ReLU 0.1, pad shortcuts, per-image standardisation, TF padding."""

    depth: int = _default("depth", 32)
    leaky_relu: float = _default("leaky_relu", 0.1)
    shortcut: Literal["conv", "pad"] = _default("shortcut", "pad")
    input_norm: Literal["mean-std", "per-image"] = _default("input_norm", "per-image")
    tf_padding: bool = _default("tf_padding", True)
    bn_eps: float = _default("bn_eps", 1e-3)


@dataclass
class ResNet18Config:
    """Options of the CIFAR ResNet-18 (He et al., "Deep Residual Learning for Image
    Recognition", arXiv:1512.03385), in the CIFAR form of adversarial-robustness code (3x3
    stem, no max-pool; as NISP-official/CARTL src/networks/resnet.py). Blocks: the 8
    BasicBlocks, a parameter-free pool block, the head (10; CARTL counts 9, without the pool)."""

    mean: list[float] = option(default_factory=lambda: list(CIFAR10_MEAN), help=(
        "per-channel normalization mean, applied inside the model"))
    std: list[float] = option(default_factory=lambda: list(CIFAR10_STD), help=(
        "per-channel normalization std, applied inside the model"))

    def __post_init__(self):
        _check_mean_std(self.mean, self.std)


@rtk.hookimpl
def register_source_models(register):
    register("small-cnn", "rtk_plugins.models.small_cnn:from_config", config=SmallCNNConfig,
             summary="Small CNN for 8x8 digits and MNIST: conv(16,32,64) + fc256 + linear head")
    # The WRN and its presets: one factory, the presets differ in their configs' defaults only.
    for name, config, summary in [
        ("wrn", WRNConfig, "CIFAR pre-activation Wide ResNet, any depth/width (default WRN-28-10)"),
        ("wrn-28-10", WRN28x10Config, "WRN-28-10 (TRADES): 4 units/stage, widths 160/320/640, ReLU, conv shortcuts"),
        ("wrn-34-10", WRN34x10Config, "WRN-34-10 (TRADES, CARTL): 5 units/stage, ReLU, conv shortcuts; 17 blocks"),
        ("wrn-32-10", WRN32x10Config,
         "Madry's WRN-32-10: 5 units/stage, leaky ReLU 0.1, pad shortcuts, per-image standardisation; 17 blocks"),
    ]:
        register(name, "rtk_plugins.models.wrn:from_config", config=config, summary=summary)
    register("resnet18", "rtk_plugins.models.resnet:from_config", config=ResNet18Config,
             summary="CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks [2,2,2,2], 512-d features")
