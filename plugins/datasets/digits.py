"""scikit-learn's bundled 8x8 handwritten digits: the ``digits`` dataset (options:
rtk_plugins.datasets.DigitsConfig)."""
from __future__ import annotations

import torch

from rtk.data import DataSplits, ImageSet, stratified_split


def load_digits(config) -> DataSplits:
    """scikit-learn's 8x8 handwritten digits: offline, ships with scikit-learn (the embedded default)."""
    from sklearn import datasets

    bunch = datasets.load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = stratified_split(labels, config.test_fraction, torch.Generator().manual_seed(0))
    return DataSplits(ImageSet(images[train_idx], labels[train_idx]), ImageSet(images[test_idx], labels[test_idx]),
                      num_classes=10, class_names=[str(i) for i in range(10)], name="digits")
