"""The study's file-backed torchvision datasets (rtk_plugins.study_datasets): layout checks with
one-line DataErrors, torchvision for parsing, lazy decoding with the study's transforms, and the
per-class splits.

torchvision's classes read the annotation files; rtk never decodes an image until a batch asks
for it (FileImageSet over a LazyImages), so a 100k-image dataset costs a list of paths and labels.
The expected files are checked before torchvision is called, so a missing dataset is one line
naming the folder instead of torchvision's "use download=True" (and Caltech's classes, which
create folders under root, are never reached). The data root is ``root``, else $RTK_DATA, else the
store's data folder, where ``--download`` puts what it fetches (see rtk_plugins.datasets.vision_data).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rtk.data import DataSplits, FileImageSet
from rtk.errors import DataError
from rtk_plugins.datasets.vision_data import (DATA_ENV, DOWNLOAD_ADVICE, Layout, _cause, read_split,
                                              require_files)


@dataclass(frozen=True)
class Source(Layout):
    """Where a dataset lives under root, what must be there (a trailing "/" marks a folder), where to get
    it, and whether torchvision can still download it (``--download``)."""

    url: str
    downloads: bool = True


SOURCES = {
    "food101": Source("food-101", ("meta/train.json", "meta/test.json", "images/"),
                      "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)"),
    "sun397": Source("SUN397", ("ClassName.txt",), "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz)"),
    "caltech101": Source("caltech101", ("101_ObjectCategories/",),
                         "https://data.caltech.edu/records/mzrjq-6wc02 (101_ObjectCategories.tar.gz)"),
    "caltech256": Source("caltech256", ("256_ObjectCategories/",),
                         "https://data.caltech.edu/records/nyy15-4j048 (256_ObjectCategories.tar)"),
    "stanford-cars": Source("stanford_cars", ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train/",
                                              "cars_test/", "cars_test_annos_withlabels.mat"),
                            "a mirror of the Stanford Cars files (the original site is gone; e.g. the Kaggle copy)",
                            downloads=False),
    "fgvc-aircraft": Source("fgvc-aircraft-2013b", ("data/images/", "data/variants.txt", "data/families.txt",
                                                     "data/manufacturers.txt"),
                            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)"),
    "dtd": Source("dtd/dtd", ("images/", "labels/"), "https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz)"),
    "oxford-pets": Source("oxford-iiit-pet", ("images/", "annotations/trainval.txt", "annotations/test.txt"),
                          "https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz and annotations.tar.gz)"),
    "flowers102": Source("flowers-102", ("jpg/", "imagelabels.mat", "setid.mat"),
                         "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
                         " (102flowers.tgz, imagelabels.mat, setid.mat)"),
}


def to_rgb(image):
    """Caltech's classes return grayscale images as they are; every batch needs 3 channels."""
    return image.convert("RGB")


class LazyImages(torch.utils.data.Dataset):
    """A torchvision dataset (built without a transform) whose items are decoded and passed through
    ``transform`` only when asked for; an unreadable image is a DataError naming the dataset and the item."""

    def __init__(self, base, name: str, transform: Callable):
        self.base = base
        self.name = name
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        try:
            image, label = self.base[i]
            return self.transform(image), label
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{self.name}: cannot read image {i} of {type(self.base).__name__} under "
                            f"{getattr(self.base, 'root', '?')} ({_cause(exc)}); replace the file with an intact"
                            " copy") from None


class AugmentedImages(FileImageSet):
    """A training split whose images are augmented each time they are read (the study's
    RandomResizedCrop + flip), with ``unaugmented``: the same images through the test transform, for
    strategies that compute features once (rtk_plugins.transfer.heads). Subsets, relabellings and
    views (FileImageSet's shallow copies) keep both, and the view (image_size, channels) holds for both."""

    def __init__(self, base: LazyImages, labels: torch.Tensor, indices: torch.Tensor | None = None, *,
                 plain: LazyImages, size: int | None = None, channels: int | None = None):
        super().__init__(base, labels, indices, size=size, channels=channels)
        self.plain = plain

    @property
    def unaugmented(self) -> FileImageSet:
        return FileImageSet(self.plain, self.labels, self.indices, size=self.size, channels=self.channels)


def labels_of(dataset) -> list[int]:
    """The labels torchvision parsed from the annotation files, without decoding any image."""
    for attr in ("_labels", "y"):
        if hasattr(dataset, attr):
            return list(getattr(dataset, attr))
    if hasattr(dataset, "_samples"):  # StanfordCars: (path, label) pairs
        return [label for _, label in dataset._samples]
    raise DataError(f"rtk cannot read the labels of torchvision's {type(dataset).__name__} (torchvision "
                    f"changed its internals?); report this with your torchvision version")


def downloading(name: str, config) -> bool:
    """Whether torchvision is asked to download: ``download = true`` (--download), for a dataset it can
    still fetch. Stanford Cars' download always raises, even over complete files, so it never is."""
    return bool(config.download) and SOURCES[name].downloads


def check_files(name: str, root: str | None, download: bool) -> Path:
    """The data root; without ``download``, every needed file checked first (one DataError)."""
    source = SOURCES[name]
    fetch = (f", or {DOWNLOAD_ADVICE}" if source.downloads
             else " (--download cannot fetch it: torchvision's download of it no longer works)")
    return require_files(name, source, root, download,
                         f"; get it from {source.url} and unpack it so that root (or {DATA_ENV}) holds"
                         f" {source.folder}/{fetch}")


def open_split(name: str, base: Path, download: bool, build: Callable[[str], object], split: str):
    """``build(root)``, with torchvision's failures turned into one-line DataErrors."""
    source = SOURCES[name]
    return read_split(name, split, base / source.folder, download, lambda: build(str(base)),
                      by_hand=f"fetch the files by hand ({source.url})",
                      damaged=f"corrupt or incomplete: replace them with intact copies ({source.pattern()})")


def eval_transform(config):
    """The study's test transform: short side to ``resize`` (256), center square of ``image_size`` (224);
    Ethos-lab/transfer_learning_for_adversarial_robustness, certified/transfer_datasets.py _TEST_TRANSFORM
    (Scale(256) + CenterCrop(224)) and empirical/robustness/transfer_utils/constants.py TEST_TRANSFORMS."""
    from torchvision import transforms

    return transforms.Compose([transforms.Lambda(to_rgb), transforms.Resize(config.resize),
                               transforms.CenterCrop(config.image_size), transforms.ToTensor()])


def train_transform(config):
    """The study's training transform, RandomResizedCrop(image_size) + RandomHorizontalFlip on the decoded
    image (same files, _TRAIN_TRANSFORM / TRAIN_TRANSFORMS; RandomSizedCrop is the old name of
    RandomResizedCrop), or the test transform for ``train_transform = "center-crop"``. torchvision draws the
    crops from torch's global generator, which rtk seeds for every run (and DataLoader workers per worker)."""
    from torchvision import transforms

    if config.train_transform == "center-crop":
        return eval_transform(config)
    return transforms.Compose([transforms.Lambda(to_rgb), transforms.RandomResizedCrop(config.image_size),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor()])


def builders(name: str, config) -> dict[str, Callable[[str], object]]:
    """torchvision constructors per official split: {"train": [...], "test": [...]} or {"all": [...]}."""
    from torchvision import datasets as tv

    kw = dict(download=downloading(name, config))  # no transform: LazyImages applies the split's own
    if name == "food101":
        return {s: [lambda r, s=s: tv.Food101(r, split=s, **kw)] for s in ("train", "test")}
    if name == "stanford-cars":
        return {s: [lambda r, s=s: tv.StanfordCars(r, split=s, **kw)] for s in ("train", "test")}
    if name == "fgvc-aircraft":
        level = config.annotation_level
        return {"train": [lambda r: tv.FGVCAircraft(r, split="trainval", annotation_level=level, **kw)],
                "test": [lambda r: tv.FGVCAircraft(r, split="test", annotation_level=level, **kw)]}
    if name == "dtd":
        p = config.partition
        return {"train": [lambda r, s=s: tv.DTD(r, split=s, partition=p, **kw) for s in ("train", "val")],
                "test": [lambda r: tv.DTD(r, split="test", partition=p, **kw)]}
    if name == "oxford-pets":
        return {"train": [lambda r: tv.OxfordIIITPet(r, split="trainval", **kw)],
                "test": [lambda r: tv.OxfordIIITPet(r, split="test", **kw)]}
    if name == "flowers102":
        return {"train": [lambda r, s=s: tv.Flowers102(r, split=s, **kw) for s in ("train", "val")],
                "test": [lambda r: tv.Flowers102(r, split="test", **kw)]}
    if name == "caltech101":
        return {"all": [lambda r: tv.Caltech101(r, target_type="category", **kw)]}
    if name == "caltech256":
        return {"all": [lambda r: tv.Caltech256(r, **kw)]}
    if name == "sun397":
        return {"all": [lambda r: tv.SUN397(r, **kw)]}
    raise ValueError(f"unknown study dataset {name!r}")


def class_names(dataset) -> list[str]:
    return list(getattr(dataset, "classes", None) or getattr(dataset, "categories"))


def joined(name: str, parts: list, names: list[str], transform: Callable) -> FileImageSet:
    """One FileImageSet over one or several official lists (DTD or Flowers train + val), read through
    ``transform``."""
    labels = []
    for part in parts:
        ids = labels_of(part)
        if name == "dtd":  # torchvision numbers each DTD list's classes on its own: map them by name
            own, lookup = class_names(part), {c: i for i, c in enumerate(names)}
            unknown = sorted(set(own) - set(lookup))
            if unknown:
                raise DataError(f"{name}: a label list names classes the training list lacks"
                                f" ({', '.join(unknown[:5])}); the label files are inconsistent: replace them with"
                                " intact copies")
            ids = [lookup[own[y]] for y in ids]
        labels += ids
    bad = [y for y in labels if not 0 <= y < len(names)]
    if bad:
        raise DataError(f"{name}: label {bad[0]} is outside 0..{len(names) - 1}; the annotation files are"
                        " inconsistent: replace them with intact copies")
    base = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    return FileImageSet(LazyImages(base, name, transform), torch.tensor(labels, dtype=torch.long))


def for_training(split: FileImageSet, config) -> FileImageSet:
    """``split`` (read through the test transform) as a training split: through the training transform,
    its ``unaugmented`` view the split itself; unchanged for ``train_transform = "center-crop"``."""
    if config.train_transform == "center-crop":
        return split
    plain = split.base
    return AugmentedImages(LazyImages(plain.base, plain.name, train_transform(config)), split.labels, split.indices,
                           plain=plain, size=split.size, channels=split.channels)


def per_class_split(name: str, labels: torch.Tensor, train_per_class: int, test_per_class: int | None,
                    seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, ``train_per_class`` training indices, then ``test_per_class`` (or all the rest) test
    indices: the first ones in index order (the dataset's file order) when ``seed`` is None, as the
    study's code takes Caltech's (certified/transfer_datasets.py: arange(start, start + 30) from each
    class's first index), else a draw seeded with ``seed``. A class too small is a DataError."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    train, test = [], []
    need = train_per_class + (test_per_class or 1)
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < need:
            raise DataError(f"{name}: class {c} has {len(idx)} images, fewer than train_per_class = {train_per_class} "
                            f"plus {test_per_class or 1} test image(s); lower train_per_class (or test_per_class)")
        if generator is not None:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:train_per_class + test_per_class] if test_per_class else idx[train_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def load_study_dataset(name: str, config) -> DataSplits:
    download = downloading(name, config)
    base = check_files(name, config.root, download)
    opened = {split: [open_split(name, base, download, build, split) for build in makers]
              for split, makers in builders(name, config).items()}
    evaluate = eval_transform(config)
    if "all" in opened:
        (dataset,) = opened["all"]
        names = class_names(dataset)
        everything = joined(name, [dataset], names, evaluate)
        seed = config.split_seed if config.per_class_split == "seeded" else None
        train_idx, test_idx = per_class_split(name, everything.labels, config.train_per_class,
                                              config.test_per_class, seed)
        train, test = everything.subset(train_idx), everything.subset(test_idx)
    else:
        names = class_names(opened["train"][0])
        train, test = joined(name, opened["train"], names, evaluate), joined(name, opened["test"], names, evaluate)
    if len(train) == 0 or len(test) == 0:
        empty = "training" if len(train) == 0 else "test"
        raise DataError(f"{name}: the {empty} split under {base / SOURCES[name].folder} is empty; check the annotation"
                        f" files ({SOURCES[name].pattern()})")
    return DataSplits(for_training(train, config), test, num_classes=len(names), class_names=names, name=name)


def load(config) -> DataSplits:
    """The factory of every study dataset: the one its config class names (``config.dataset``)."""
    return load_study_dataset(config.dataset, config)
