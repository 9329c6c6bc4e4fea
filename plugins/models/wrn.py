"""CIFAR-style pre-activation Wide ResNet, following the model contract.

Architecture: Zagoruyko & Komodakis, "Wide Residual Networks", arXiv:1605.07146. An init
3x3 conv with 16 channels, then 3 stages of ``units`` pre-activation residual units (BN,
activation, conv3x3, BN, activation, [dropout], conv3x3) with widths 16k, 32k, 64k and strides
1/2/2, then a final BN + activation + global average pool giving the features z (64k-d, 640-d
for k=10), then a linear head.

Two shortcut styles for units whose width or stride changes:

- ``"conv"`` (default): a 1x1 strided conv on the activated input, as in the PyTorch WRN
  code used by TRADES and CARTL (WRN-28-10, WRN-34-10).
- ``"pad"``: Madry et al.'s unit ("Towards Deep Learning Models Resistant to Adversarial
  Attacks", arXiv:1706.06083; MadryLab/cifar10_challenge model.py): average-pool by the
  stride, then zero-pad the channels evenly on both sides. As in that code only the
  network's first unit takes its shortcut after BN + activation; every other unit adds
  its raw input.

Blocks (deepest last): each residual unit, then the final BN + activation + pool; the init
conv belongs to no block (Shafahi et al.'s 17 blocks for WRN-32-10 = 15 units + final + head).
Module names mirror the PyTorch WRN (``block1.layer.0.conv1``) so TRADES-style checkpoints
convert by renaming prefixes only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtk.models import Normalize, RtkModel

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class PerImageStandardize(nn.Module):
    """``tf.image.per_image_standardization`` (Madry's input layer) on [0, 1] images.

    Pixels are scaled to [0, 255] first because TF floors the std at 1/sqrt(N) on the
    scale Madry fed it; standardisation is otherwise scale-free.
    """

    def __init__(self, scale: float = 255.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
        # Flooring the variance, not the std, keeps gradients finite on constant images.
        return (x - mean) / var.clamp_min(1.0 / x[0].numel()).sqrt()


class TFSameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding.

    With stride 2 on even sizes TF pads only bottom/right, so PyTorch's symmetric padding
    would shift every downsampled grid by one pixel for weights converted from TF.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return self._conv_forward(F.pad(x, (left, right, top, bottom)), self.weight, self.bias)


def _conv3x3(cin: int, cout: int, stride: int, tf_padding: bool) -> nn.Conv2d:
    if tf_padding and stride > 1:  # at stride 1 TF's SAME equals padding=1
        return TFSameConv2d(cin, cout, 3, stride=stride, bias=False)
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _activation(slope: float) -> nn.Module:
    return nn.LeakyReLU(slope, inplace=True) if slope > 0 else nn.ReLU(inplace=True)


class WideBasic(nn.Module):
    """One pre-activation residual unit (two 3x3 convs)."""

    def __init__(self, cin: int, cout: int, stride: int, *, slope: float, dropout: float, shortcut: str,
                 activate_before_residual: bool, tf_padding: bool, bn_eps: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=bn_eps)
        self.relu1 = _activation(slope)
        self.conv1 = _conv3x3(cin, cout, stride, tf_padding)
        self.bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.relu2 = _activation(slope)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(cout, cout, 1, tf_padding)
        self.activate_before_residual = activate_before_residual
        self.stride, self.extra_channels = stride, cout - cin
        changes = cin != cout or stride != 1
        self.convShortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if shortcut == "conv" and changes
                             else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        if self.activate_before_residual:
            x = out
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(out)))))
        return out + self._shortcut(x)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.convShortcut is not None:
            return self.convShortcut(x)
        if self.stride > 1:
            # ceil_mode keeps shapes equal to the strided conv's on odd sizes (TF 'VALID' on even ones).
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        if self.extra_channels:
            before = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))
        return x


class NetworkBlock(nn.Module):
    """A stage of residual units (named like the PyTorch WRN: ``blockN.layer.i``)."""

    def __init__(self, units: Sequence[nn.Module]):
        super().__init__()
        self.layer = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNetBody(nn.Module):
    def __init__(self, units: int, widen: int, *, slope: float = 0.0, dropout: float = 0.0, shortcut: str = "conv",
                 tf_padding: bool = False, bn_eps: float = 1e-5, in_channels: int = 3):
        super().__init__()
        if shortcut not in ("conv", "pad"):
            raise ValueError(f'shortcut must be "conv" or "pad", got "{shortcut}"')
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        for stage, stride in enumerate((1, 2, 2)):
            stage_units = []
            for i in range(units):
                cin = widths[stage] if i == 0 else widths[stage + 1]
                s = stride if i == 0 else 1
                if shortcut == "pad":
                    pre = stage == 0 and i == 0  # Madry: activate_before_residual = [True, False, False]
                else:
                    pre = cin != widths[stage + 1] or s != 1
                stage_units.append(WideBasic(cin, widths[stage + 1], s, slope=slope, dropout=dropout, shortcut=shortcut,
                                             activate_before_residual=pre, tf_padding=tf_padding, bn_eps=bn_eps))
            setattr(self, f"block{stage + 1}", NetworkBlock(stage_units))
        self.final = nn.Sequential(nn.BatchNorm2d(widths[3], eps=bn_eps), _activation(slope),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = widths[3]
        self.block_names = [f"block{s}.layer.{i}" for s in (1, 2, 3) for i in range(units)] + ["final"]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # N(0, sqrt(2/(k*k*out))): the init of both Madry's TF code and the PyTorch WRN.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.block3(self.block2(self.block1(self.conv1(x)))))


def wide_resnet(num_classes: int, units: int, widen: int, *, leaky_relu: float = 0.0, shortcut: str = "conv",
                dropout: float = 0.0, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                input_norm: str = "mean-std", tf_padding: bool = False, bn_eps: float = 1e-5) -> RtkModel:
    """A WRN with ``units`` residual units per stage and widths 16/16k/32k/64k, as an RtkModel.

    input_norm: "mean-std" (Normalize(mean, std)) or "per-image" (Madry's per-image
    standardisation; mean/std are then unused).
    """
    body = WideResNetBody(units, widen, slope=leaky_relu, dropout=dropout, shortcut=shortcut,
                          tf_padding=tf_padding, bn_eps=bn_eps, in_channels=len(mean))
    if input_norm == "per-image":
        preprocess: nn.Module = PerImageStandardize()
    elif input_norm == "mean-std":
        preprocess = Normalize(mean, std)
    else:
        raise ValueError(f'input_norm must be "mean-std" or "per-image", got "{input_norm}"')
    head = nn.Linear(body.feature_dim, num_classes)
    nn.init.zeros_(head.bias)
    return RtkModel(body, head, body.feature_dim, body.block_names, preprocess)


def from_config(config, num_classes: int, variant=None) -> RtkModel:
    """The factory of ``wrn`` and its presets: rtk_plugins.models.WRNConfig's options."""
    from rtk_plugins.models import wrn_units_per_stage

    return wide_resnet(num_classes, wrn_units_per_stage(config.depth, config.shortcut), config.widen,
                       leaky_relu=config.leaky_relu, shortcut=config.shortcut, dropout=config.dropout,
                       mean=config.mean, std=config.std, input_norm=config.input_norm,
                       tf_padding=config.tf_padding, bn_eps=config.bn_eps)
