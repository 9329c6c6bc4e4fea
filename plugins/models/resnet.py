"""CIFAR ResNet-18, following the model contract.

Architecture: He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385,
in the CIFAR form common in adversarial-robustness code: a 3x3 stride-1 stem conv with 64
channels, BN, ReLU and no max-pool, then 4 stages of 2 BasicBlocks (widths 64/128/256/512,
strides 1/2/2/2, 1x1 conv + BN shortcut when the shape changes), global average pool to the
512-d features z, linear head. Normalization (CIFAR-10 mean/std by default) runs inside.

Blocks (deepest last): the 8 BasicBlocks, then the final pool; the stem belongs to no
block (as the WRN init conv), and the head is appended by RtkModel: 10 blocks in all.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtk.models import Normalize, RtkModel

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBody(nn.Module):
    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.block_names = []
        cin = 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for i in range(count):
                blocks.append(BasicBlock(cin, width, (1 if stage == 0 else 2) if i == 0 else 1))
                cin = width
                self.block_names.append(f"layer{stage + 1}.{i}")
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.block_names.append("pool")
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.pool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


def resnet18(num_classes: int, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> RtkModel:
    body = ResNetBody((2, 2, 2, 2), in_channels=len(mean))
    return RtkModel(body, nn.Linear(body.feature_dim, num_classes), body.feature_dim, body.block_names,
                    Normalize(mean, std))


def from_config(config, num_classes: int, variant=None) -> RtkModel:
    """The ``resnet18`` factory: rtk_plugins.models.ResNet18Config's options."""
    return resnet18(num_classes, config.mean, config.std)
