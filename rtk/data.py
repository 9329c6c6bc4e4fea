"""Datasets in rtk: images in [0, 1] with integer labels, split into train / val / test.

Dataset plugins return :class:`DataSplits`; the options every dataset shares (class subsets,
label remapping, N examples per class, a held-out validation split) live in
:class:`DatasetConfig`, which every dataset config subclasses, and rtk applies them in
:func:`apply_options` so that they mean the same thing for every dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from rtk.config.schema import DatasetConfig  # noqa: F401  (re-exported: plugins subclass it)
from rtk.errors import DataError


class ImageSet(torch.utils.data.Dataset):
    """Images held in memory: uint8 (scaled by 1/255 on access) or float in [0, 1], shape (N, C, H, W).

    ``size`` resizes each image to size x size (bilinear) as it is read, so that attacks and
    smoothing noise act at that resolution (the study's 224-px CIFAR) while memory holds the
    small originals; None keeps them as stored."""

    size: int | None = None  # also for subclasses that hold other tensors (cached features)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int | None = None):
        if images.ndim != 4:
            raise DataError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.size is None or tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        batch = x if x.ndim == 4 else x.unsqueeze(0)
        resized = torch.nn.functional.interpolate(batch, size=(self.size, self.size), mode="bilinear",
                                                  align_corners=False, antialias=self.size < min(x.shape[-2:]))
        return resized.clamp_(0.0, 1.0) if x.ndim == 4 else resized[0].clamp_(0.0, 1.0)

    def __getitem__(self, i):
        return self._to_float(self.images[i]), int(self.labels[i])

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch as tensors: (float images, labels)."""
        return self._to_float(self.images[indices]), self.labels[indices]

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.size)

    def relabel(self, labels: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images, labels, self.size)


class FileImageSet(torch.utils.data.Dataset):
    """A file-backed dataset (ImageFolder, Food-101, ...): ``base[i]`` gives (tensor in [0,1], label)."""

    def __init__(self, base, labels: torch.Tensor, indices: torch.Tensor | None = None):
        self.base = base
        self.labels = labels.long()
        self.indices = torch.arange(len(labels)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image, _ = self.base[int(self.indices[i])]
        return image, int(self.labels[i])

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([self[int(i)][0] for i in indices]), self.labels[indices]

    def subset(self, indices: torch.Tensor) -> "FileImageSet":
        return FileImageSet(self.base, self.labels[indices], self.indices[indices])

    def relabel(self, labels: torch.Tensor) -> "FileImageSet":
        return FileImageSet(self.base, labels, self.indices)


@dataclass
class DataSplits:
    train: ImageSet | FileImageSet
    test: ImageSet | FileImageSet
    num_classes: int
    val: ImageSet | FileImageSet | None = None
    class_names: list[str] | None = None
    name: str = ""

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.test[0][0].shape)


def iterate(data, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            num_workers: int = 0, pin_memory: bool = False, part=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images, labels) on the CPU (loaded as ``load_batches`` says).

    ``part(n)`` (a slice; rtk.services.distributed.split_batch) keeps only that part of each batch of
    ``n`` before loading, so a rank of a distributed job loads only its share; a part may be
    empty.
    """
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = [order[start:start + batch_size] for start in range(0, n, batch_size)]
    if part is not None:
        batches = [b[part(len(b))] for b in batches]
    yield from load_batches(data, batches, num_workers, pin_memory)


def owned_batches(data, batch_size: int, owns=lambda batch: True, *, num_workers: int = 0,
                  pin_memory: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, images, labels)`` of the consecutive batches ``b`` of ``data`` with ``owns(b)``
    (rtk.services.distributed.owns_batch: a rank's round-robin share), in order."""
    n = len(data)
    starts = [start for b, start in enumerate(range(0, n, batch_size)) if owns(b)]
    batches = [torch.arange(start, min(start + batch_size, n)) for start in starts]
    for start, (images, labels) in zip(starts, load_batches(data, batches, num_workers, pin_memory)):
        yield start, images, labels


def load_batches(data, batches: list[torch.Tensor], num_workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of each batch of indices of ``data``, in order (an empty batch gives empty tensors).
    In-memory sets are sliced without a DataLoader; file-backed sets load through a DataLoader with
    ``num_workers`` worker processes and ``pin_memory`` when ``num_workers > 0`` (slicing a tensor in
    the main process is faster than any worker)."""
    if isinstance(data, ImageSet) or getattr(data, "in_memory", False) or num_workers == 0:
        for b in batches:
            yield data.take(b) if len(b) else _empty(data, b)
        return
    loader = iter(torch.utils.data.DataLoader(data, batch_sampler=[b.tolist() for b in batches if len(b)],
                                              num_workers=num_workers, pin_memory=pin_memory))
    for b in batches:
        yield next(loader) if len(b) else _empty(data, b)


def _empty(data, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, ImageSet):
        return data.take(indices)
    return torch.empty((0, *data[0][0].shape)), data.labels[indices]


def stratified_split(labels: torch.Tensor, fraction: float, generator: torch.Generator):
    held, kept = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def _keep_classes(split, classes: list[int], remap: bool):
    mask = torch.isin(split.labels, torch.tensor(classes))
    idx = mask.nonzero().flatten()
    subset = split.subset(idx)
    if remap:
        lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))
        subset = subset.relabel(lookup[subset.labels])
    return subset


def apply_options(splits: DataSplits, cfg: DatasetConfig) -> DataSplits:
    """Apply the shared dataset options (classes, remap, per_class, val_fraction) to ``splits``."""
    num_classes, names = splits.num_classes, splits.class_names
    train, test, val = splits.train, splits.test, splits.val
    if cfg.classes is not None:
        bad = [c for c in cfg.classes if not 0 <= c < num_classes]
        if bad or not cfg.classes:
            raise DataError(f"classes {bad or '[]'} are not valid for {splits.name or 'this dataset'}, which has"
                            f" classes 0..{num_classes - 1}")
        if len(set(cfg.classes)) != len(cfg.classes):
            raise DataError(f"classes lists a class twice: {cfg.classes}")
        train, test = (_keep_classes(s, cfg.classes, cfg.remap) for s in (train, test))
        val = _keep_classes(val, cfg.classes, cfg.remap) if val is not None else None
        if cfg.remap:
            names = [names[c] for c in cfg.classes] if names else None
            num_classes = len(cfg.classes)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.val_fraction > 0:
        if val is not None:
            raise DataError(f"{splits.name or 'this dataset'} already has a validation split; drop val_fraction")
        kept, held = stratified_split(train.labels, cfg.val_fraction, generator)
        train, val = train.subset(kept), train.subset(held)
    if cfg.per_class is not None:
        chosen = []
        for c in train.labels.unique().tolist():
            idx = (train.labels == c).nonzero().flatten()
            if len(idx) < cfg.per_class:
                raise DataError(f"per_class={cfg.per_class} but class {c} of {splits.name or 'the dataset'} has only"
                                f" {len(idx)} training examples")
            chosen.append(idx[torch.randperm(len(idx), generator=generator)[:cfg.per_class]])
        train = train.subset(torch.cat(chosen).sort().values)
    return replace(splits, train=train, test=test, val=val, num_classes=num_classes, class_names=names)
