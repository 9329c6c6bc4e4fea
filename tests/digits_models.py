"""The tiny digits classifier several test modules attack: built and trained the same way everywhere."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rtk.config.fields import build_config
from rtk_plugins.datasets import DigitsConfig, make_digits
from rtk_plugins.models import SmallCNNConfig, make_small_cnn


def small_cnn(num_classes: int):
    """small-cnn with channels [8, 16] and 32 features: trains in about a second on one thread."""
    return make_small_cnn(build_config(SmallCNNConfig, {"channels": [8, 16], "feature_dim": 32}), num_classes)


def train_digits_cnn(epochs: int, lr: float, batch_size: int, generator: torch.Generator | None = None):
    """A small_cnn(10) trained with Adam on all digits (seed 0), returned in eval mode with the splits.

    ``generator`` draws the batch order; None uses the global RNG (seeded 0 here).
    """
    torch.manual_seed(0)
    splits = make_digits(DigitsConfig())
    images, labels = splits.train.take(torch.arange(len(splits.train)))
    model = small_cnn(10)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval(), splits
