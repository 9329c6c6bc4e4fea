"""A small CNN for 8x8 digits and MNIST, following the model contract."""
from __future__ import annotations

from torch import nn

from rtk.models import Normalize, RtkModel


def small_cnn(num_classes: int, channels: list[int], feature_dim: int, in_channels: int,
              mean: list[float], std: list[float]) -> RtkModel:
    stages = []
    prev = in_channels
    for width in channels:
        stages.append(nn.Sequential(nn.Conv2d(prev, width, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(2, ceil_mode=True)))
        prev = width
    # Adaptive pooling keeps the same weights valid for 8x8 digits and 28x28 MNIST.
    fc = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(prev * 4, feature_dim), nn.ReLU(inplace=True))
    body = nn.Sequential(*stages, fc)
    names = [str(i) for i in range(len(stages) + 1)]
    return RtkModel(body, nn.Linear(feature_dim, num_classes), feature_dim, names, Normalize(mean, std))


def from_config(config, num_classes: int, variant=None) -> RtkModel:
    """The ``small-cnn`` factory: rtk_plugins.models.SmallCNNConfig's options."""
    return small_cnn(num_classes, config.channels, config.feature_dim, config.in_channels, config.mean, config.std)
