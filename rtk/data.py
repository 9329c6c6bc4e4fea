"""Datasets in rtk: images in [0, 1] with integer labels, split into train / val / test.

Dataset plugins return :class:`DataSplits`; the options every dataset shares (class subsets,
label remapping, N examples per class, a held-out validation split, the image size and the
number of channels) live in :class:`DatasetConfig`, which every dataset config subclasses, and
rtk applies them in :func:`apply_options` so that they mean the same thing for every dataset.

``image_size`` and ``channels`` are applied as images are read (:func:`convert_images`), never
to a whole dataset at once: an in-memory set keeps its stored (uint8) images and converts each
batch with one interpolate call, so MNIST at 224 px, 3 channels, costs the memory of MNIST
(converted whole, its 60,000 training images would take 36 GB as float32); a file-backed set
converts each image after its plugin's own transform.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from rtk.config.schema import DatasetConfig  # noqa: F401  (re-exported: plugins subclass it)
from rtk.errors import DataError

# ITU-R 601-2 luma, the weights of PIL's convert("L"); they sum to 1, so [0, 1] stays [0, 1].
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def check_view(size: int | None, channels: int | None) -> None:
    """A DataError unless ``size`` is unset or positive and ``channels`` unset, 1 or 3."""
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DataError(f"channels = {channels!r} is not supported: set channels = 1 (grayscale) or 3 (RGB), or leave"
                        " it unset to keep the stored channels")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"image_size = {size!r} is not a positive integer: set e.g. image_size = 32, or leave it unset"
                        " to keep the stored size")


def check_convertible(stored: int, channels: int | None) -> None:
    """A DataError unless images with ``stored`` channels can be given ``channels`` (1 <-> 3 only)."""
    if channels is not None and channels != stored and stored not in (1, 3):
        raise DataError(f"cannot turn {stored}-channel images into {channels} channels: rtk converts between 1"
                        " (grayscale) and 3 (RGB) only; leave channels unset")


def convert_images(images: torch.Tensor, size: int | None = None, channels: int | None = None) -> torch.Tensor:
    """Float images in [0, 1], (C, H, W) or (N, C, H, W), resized to ``size`` x ``size`` (bilinear,
    antialiased when shrinking) and given ``channels`` channels: 1 -> 3 repeats the grey channel, 3 -> 1
    takes the ITU-R 601-2 luma (LUMA_WEIGHTS, as PIL's "L", without its rounding to 8 bits). None keeps
    the stored size or channels; images already as asked come back unchanged."""
    if size is None and channels is None:
        return images
    check_view(size, channels)
    batch = images if images.ndim == 4 else images.unsqueeze(0)
    stored = batch.shape[1]
    check_convertible(stored, channels)
    if channels == 1 and stored == 3:  # before resizing: one channel to interpolate instead of three
        weights = torch.tensor(LUMA_WEIGHTS, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        batch = (batch * weights).sum(1, keepdim=True).clamp_(0.0, 1.0)
    if size is not None and tuple(batch.shape[-2:]) != (size, size):
        batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=size < min(batch.shape[-2:])).clamp_(0.0, 1.0)
    if channels == 3 and stored == 1:  # after resizing, for the same reason; a copy, so in-place edits stay safe
        batch = batch.repeat(1, 3, 1, 1)
    return batch if images.ndim == 4 else batch[0]


class ImageSet(torch.utils.data.Dataset):
    """Images held in memory: uint8 (scaled by 1/255 on access) or float in [0, 1], shape (N, C, H, W).

    ``size`` and ``channels`` convert images as they are read (:func:`convert_images`, a whole
    batch at once in :meth:`take`), so attacks and smoothing noise act at that resolution (the
    study's 224-px CIFAR) while memory holds the small originals; None keeps them as stored."""

    size: int | None = None  # also for subclasses that hold other tensors (cached features)
    channels: int | None = None

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int | None = None,
                 channels: int | None = None):
        if images.ndim != 4:
            raise DataError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        check_view(size, channels)
        check_convertible(images.shape[1], channels)
        self.images = images
        self.labels = labels.long()
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return convert_images(x, self.size, self.channels)

    def __getitem__(self, i):
        return self._to_float(self.images[i]), int(self.labels[i])

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch as tensors: (float images, labels)."""
        return self._to_float(self.images[indices]), self.labels[indices]

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.size, self.channels)

    def relabel(self, labels: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images, labels, self.size, self.channels)

    def viewed(self, size: int | None = None, channels: int | None = None) -> "ImageSet":
        """The same stored images read at ``size`` / with ``channels`` (None: as this set reads them)."""
        return ImageSet(self.images, self.labels, self.size if size is None else size,
                        self.channels if channels is None else channels)


class FileImageSet(torch.utils.data.Dataset):
    """A file-backed dataset (ImageFolder, Food-101, ...): ``base[i]`` gives (tensor in [0,1], label).

    ``size`` and ``channels`` convert each image after ``base`` has read it (:func:`convert_images`),
    in the DataLoader's workers when there are any. Subclasses keep their own attributes through
    :meth:`subset`, :meth:`relabel` and :meth:`viewed` (each is a shallow copy)."""

    def __init__(self, base, labels: torch.Tensor, indices: torch.Tensor | None = None, *, size: int | None = None,
                 channels: int | None = None):
        check_view(size, channels)
        self.base = base
        self.labels = labels.long()
        self.indices = torch.arange(len(labels)) if indices is None else indices
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image, _ = self.base[int(self.indices[i])]
        return convert_images(image, self.size, self.channels), int(self.labels[i])

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([self[int(i)][0] for i in indices]), self.labels[indices]

    def _copy(self, **changes) -> "FileImageSet":
        twin = copy.copy(self)
        twin.__dict__.update(changes)
        return twin

    def subset(self, indices: torch.Tensor) -> "FileImageSet":
        return self._copy(labels=self.labels[indices], indices=self.indices[indices])

    def relabel(self, labels: torch.Tensor) -> "FileImageSet":
        return self._copy(labels=labels.long())

    def viewed(self, size: int | None = None, channels: int | None = None) -> "FileImageSet":
        """The same files read at ``size`` / with ``channels`` (None: as this set reads them)."""
        check_view(size, channels)
        return self._copy(size=self.size if size is None else size,
                          channels=self.channels if channels is None else channels)


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


def _viewed(split, cfg: DatasetConfig, dataset: str):
    """``split`` read at the config's image_size / channels (unchanged when both are unset); a dataset
    whose config ``resizes_itself`` already produced image_size, so only channels is applied."""
    size, channels = getattr(cfg, "image_size", None), getattr(cfg, "channels", None)
    if getattr(cfg, "resizes_itself", False):
        size = None
    if split is None or (size is None and channels is None):
        return split
    if not hasattr(split, "viewed"):
        raise DataError(f"{dataset or 'this dataset'} returns a {type(split).__name__}, which cannot be resized or"
                        " converted: leave image_size and channels unset, or return an rtk.data.ImageSet or"
                        " FileImageSet")
    return split.viewed(size, channels)


def apply_options(splits: DataSplits, cfg: DatasetConfig) -> DataSplits:
    """Apply the shared dataset options (classes, remap, per_class, val_fraction, image_size,
    channels) to ``splits``."""
    num_classes, names = splits.num_classes, splits.class_names
    train, test, val = (_viewed(s, cfg, splits.name) for s in (splits.train, splits.test, splits.val))
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
