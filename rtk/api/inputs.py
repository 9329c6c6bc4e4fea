"""The data ``rtk.evaluate`` and ``rtk.certify`` read: a dataset name (built through the registry),
an rtk image set or DataSplits, a torch Dataset of (image, label) pairs or a DataLoader, each turned
into an rtk image set (len, take, subset, labels) with its class count and names when known.

Images must be float in [0, 1] (or uint8) and (N, C, H, W): attacks act in pixel space, so bad input
is a one-line RtkError naming the fix. Importing this module loads neither torch nor any plugin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtk.errors import RtkError

if TYPE_CHECKING:
    import torch

__all__ = ["EvaluationData", "SPLITS", "evaluation_data"]

SPLITS = ("test", "val", "train")
RANGE_TOLERANCE = 1e-6


@dataclass
class EvaluationData:
    """The examples to evaluate and what is known of their classes (None where the data does not say)."""

    test: Any  # an rtk.data image set: len(), take(indices), subset(indices), labels
    num_classes: int | None = None
    class_names: list[str] | None = None


def _pair(item, where: str):
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise RtkError(f"data: {where} is a {type(item).__name__}, not an (image, label) pair; give a Dataset or"
                       " DataLoader of (image tensor in [0, 1], integer label) pairs")
    return item[0], item[1]


def _checked(images: torch.Tensor, where: str) -> torch.Tensor:
    """``images`` as rtk image sets hold them (float in [0, 1] or uint8, (N, C, H, W)), or an RtkError."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise RtkError(f"data: {where} are {type(images).__name__}, not tensors; add transforms.ToTensor() to the"
                       " dataset's transforms")
    if images.ndim != 4:
        raise RtkError(f"data: {where} have shape {tuple(images.shape)}, not (N, C, H, W)")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise RtkError(f"data: {where} are {images.dtype}; give float images in [0, 1] (or uint8)")
    if images.numel() == 0:
        return images
    low, high = float(images.min()), float(images.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise RtkError(f"data: {where} range over [{low:.3g}, {high:.3g}], not [0, 1]: attacks act in pixel space,"
                       " so drop Normalize from the transforms and normalise inside the model (rtk.models.Normalize)")
    return images


class _Labels:
    """The labels of an _ItemSet, read item by item when first asked for (most were cached when
    their images were taken)."""

    def __init__(self, items: "_ItemSet"):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, indices):
        import torch

        indices = torch.as_tensor(indices).reshape(-1)
        return torch.tensor([self.items.label(int(i)) for i in indices], dtype=torch.long)

    def long(self):
        import torch

        return self[torch.arange(len(self.items))]


class _ItemSet:
    """A torch Dataset of (image, label) pairs as an rtk image set: batches are read item by item."""

    def __init__(self, dataset, positions: list[int] | None = None):
        self.dataset = dataset
        self.positions = positions
        self._labels: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.positions) if self.positions is not None else len(self.dataset)

    def _item(self, i: int):
        position = self.positions[i] if self.positions is not None else i
        image, label = _pair(self.dataset[position], f"item {position}")
        try:
            self._labels[i] = int(label)
        except (TypeError, ValueError):
            raise RtkError(f"data: the label of item {position} is {label!r}, not an integer class") from None
        return image

    def label(self, i: int) -> int:
        if i not in self._labels:
            self._item(i)
        return self._labels[i]

    def take(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        chosen = [int(i) for i in indices]
        images = [self._item(i) for i in chosen]
        if not images:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        if not all(isinstance(x, torch.Tensor) for x in images):
            bad = next(x for x in images if not isinstance(x, torch.Tensor))
            raise RtkError(f"data: the dataset gives {type(bad).__name__} images, not tensors; add"
                           " transforms.ToTensor() to its transforms")
        batch = _checked(torch.stack(images), "the dataset's images")
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
        return batch, torch.tensor([self._labels[i] for i in chosen], dtype=torch.long)

    @property
    def labels(self) -> _Labels:
        return _Labels(self)

    def subset(self, indices) -> "_ItemSet":
        base = self.positions if self.positions is not None else range(len(self.dataset))
        return _ItemSet(self.dataset, [base[int(i)] for i in indices])


def _loaded(loader, cap: int | None):
    """A DataLoader's batches concatenated into an ImageSet, stopping once ``cap`` examples are read."""
    import torch

    from rtk.data import ImageSet

    images, labels, count = [], [], 0
    for batch in loader:
        x, y = _pair(batch, "a batch of the DataLoader")
        images.append(_checked(x, "the DataLoader's images"))
        labels.append(torch.as_tensor(y).reshape(-1).long())
        count += len(labels[-1])
        if cap is not None and count >= cap:
            break
    if not images:
        raise RtkError("data: the DataLoader gave no batches")
    return ImageSet(torch.cat(images), torch.cat(labels))


def _named(name: str, options: dict, split: str) -> EvaluationData:
    from rtk.api.components import _spec
    from rtk.stages.datasets import load_dataset

    if not isinstance(options, dict):
        raise RtkError(f'data_options: expected a dict of dataset options, e.g. {{"classes": [5, 6, 7, 8, 9]}}, got'
                       f" {options!r}")
    splits = load_dataset(_spec("dataset", name, dict(options), f'dataset "{name}"'))
    return _split(splits, split, f'dataset "{name}"')


def _split(splits, split: str, what: str) -> EvaluationData:
    chosen = getattr(splits, split)
    if chosen is None:
        hint = '; hold one out with data_options={"val_fraction": 0.1}' if split == "val" else ""
        raise RtkError(f"split: {what} has no {split} split{hint}")
    return EvaluationData(chosen, splits.num_classes, splits.class_names)


def evaluation_data(data, data_options: dict | None, split: str, n: int | None, subset: str) -> EvaluationData:
    """The examples ``evaluate`` and ``certify`` read, from a dataset name, an rtk image set or
    DataSplits, a torch Dataset or a DataLoader."""
    import torch

    from rtk.data import DataSplits, FileImageSet, ImageSet

    if split not in SPLITS:
        raise RtkError(f'split: "{split}" is not one of {", ".join(SPLITS)}')
    if isinstance(data, str):
        return _named(data, data_options or {}, split)
    if data_options is not None:
        raise RtkError(f"data_options: they configure a dataset given by name; data is a {type(data).__name__}")
    if isinstance(data, DataSplits):
        return _split(data, split, data.name or "the DataSplits")
    if isinstance(data, (ImageSet, FileImageSet)):  # their labels are in memory: the class count is cheap
        return EvaluationData(data, int(data.labels.max()) + 1 if len(data) else None)
    if isinstance(data, torch.utils.data.DataLoader):
        return EvaluationData(_loaded(data, n if subset == "first" else None))
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        names = getattr(data, "classes", None)
        names = [str(c) for c in names] if isinstance(names, (list, tuple)) and names else None
        return EvaluationData(_ItemSet(data), len(names) if names else None, names)
    raise RtkError(f"data: expected a dataset name, a torch Dataset of (image, label) pairs or a DataLoader, got"
                   f" {type(data).__name__}")
