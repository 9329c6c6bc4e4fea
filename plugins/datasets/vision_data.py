"""torchvision datasets behind the dataset plugins: finding the files, turning torchvision's uint8
arrays into in-memory ImageSets, and one-line DataErrors in place of torchvision's tracebacks.

The data root is ``root``, else $RTK_DATA, else the store's data folder (``rtk.services.store.home()
/ "data"``), where ``--download`` puts what it fetches when neither is given. torchvision is only
ever asked to download when the run says so (``--download``, which sets ``download = true``);
otherwise the expected files are checked here first, so a missing dataset never reaches torchvision
(whose message suggests a download) and never touches the network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rtk.data import DataSplits, FileImageSet, ImageSet
from rtk.errors import DataError

DATA_ENV = "RTK_DATA"


@dataclass(frozen=True)
class Layout:
    """Where torchvision reads a dataset from, relative to its root, and the files it needs (a
    trailing "/" marks a folder)."""

    folder: str
    files: tuple[str, ...]

    def pattern(self) -> str:
        return f"ROOT/{self.folder}/{{{', '.join(self.files)}}}"


MNIST = Layout("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
CIFAR10 = Layout("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"))
CIFAR100 = Layout("cifar-100-python", ("train", "test", "meta"))
SVHN_SPLITS = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


DOWNLOAD_ADVICE = "pass --download (rtk run / rtk eval) on a machine with network access"


def data_home() -> Path:
    """The default data root: the store's data folder (``$RTK_HOME/data``, else ``~/.cache/rtk/data``)."""
    from rtk.services.store import home

    return home() / "data"


def resolve_root(root: str | None) -> tuple[Path, str]:
    """The data root and where it came from (for messages): ``root``, else $RTK_DATA, else data_home()."""
    if root is not None and str(root).strip():
        base = Path(root).expanduser().resolve()
        return base, f"root = {base}"
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        base = Path(env).expanduser().resolve()
        return base, f"{DATA_ENV} = {base}"
    base = data_home()
    return base, f"neither root nor {DATA_ENV} is set, so rtk looked in the store's data folder {base}"


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= 200 else first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def require_files(dataset: str, layout: Layout, root: str | None, download: bool, advice: str) -> Path:
    """The data root (resolve_root); without ``download``, every file of ``layout`` is checked
    first, and missing ones are one DataError that says where rtk looked and ends with ``advice``."""
    base, origin = resolve_root(root)
    folder = base / layout.folder
    if not download:
        missing = [name for name in layout.files
                   if not ((folder / name).is_dir() if name.endswith("/") else (folder / name).is_file())]
        if missing:
            what = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}"
            raise DataError(f"{dataset}: dataset files not found in {folder} ({what}; {origin}); rtk expects "
                            f"{layout.pattern()}{advice}")
    return base


def read_split(dataset: str, split: str, folder: Path, download: bool, build: Callable[[], object], *,
               by_hand: str, damaged: str):
    """``build()``, with torchvision's failures as one-line DataErrors: a failed download says what
    to fetch ``by_hand``, unreadable files what they look like and what to do (``damaged``)."""
    try:
        return build()
    except (DataError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if download:
            raise DataError(f"{dataset}: could not download or read the {split} split into {folder} ({_cause(exc)}); "
                            f"check the network connection, or {by_hand} and run without --download") from None
        raise DataError(f"{dataset}: cannot read the {split} split in {folder} ({_cause(exc)}); the files look "
                        f"{damaged}") from None


def open_torchvision(dataset: str, layout: Layout, root: str | None, download: bool,
                     build: Callable[[str, str], object], splits: tuple[str, ...]) -> list:
    """``build(root, split)`` for each split, with missing or unreadable files as one DataError."""
    base = require_files(dataset, layout, root, download,
                         f"; point root (or {DATA_ENV}) at the folder that holds {layout.folder}/,"
                         f" or {DOWNLOAD_ADVICE}")
    by_hand = f"copy the files there by hand ({layout.pattern()})"
    damaged = (f"corrupt or truncated: replace them with intact copies ({layout.pattern()}), or delete them and"
               f" {DOWNLOAD_ADVICE}")
    return [read_split(dataset, split, base / layout.folder, download, lambda split=split: build(str(base), split),
                       by_hand=by_hand, damaged=damaged) for split in splits]


def to_image_set(images, labels, layout: str, dataset: str) -> ImageSet:
    """An in-memory uint8 (N, C, H, W) ImageSet from arrays laid out as ``NHW``, ``NHWC`` or ``NCHW``, as
    stored (rtk.data.apply_options applies image_size and channels as batches are read)."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if x.dtype != torch.uint8 or len(x) != len(y):
        raise DataError(f"{dataset}: the files hold {len(x)} {x.dtype} images and {len(y)} labels; expected as many "
                        "uint8 images as labels: replace the files with intact copies")
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"unknown layout {layout!r}")
    return ImageSet(x.contiguous(), y.long())


def load_mnist(config) -> DataSplits:
    from torchvision import datasets

    train, test = open_torchvision(
        "mnist", MNIST, config.root, config.download,
        lambda root, split: datasets.MNIST(root, train=split == "train", download=config.download), ("train", "test"))
    return DataSplits(to_image_set(train.data, train.targets, "NHW", "mnist"),
                      to_image_set(test.data, test.targets, "NHW", "mnist"),
                      num_classes=len(train.classes), class_names=list(train.classes), name="mnist")


def load_cifar(config, classes: int) -> DataSplits:
    from torchvision import datasets

    if classes == 10:
        name, layout, cls = "cifar10", CIFAR10, datasets.CIFAR10
    else:
        name, layout, cls = "cifar100", CIFAR100, datasets.CIFAR100
    # torchvision verifies every file's md5 before unpickling it, so only the genuine batches are unpickled.
    train, test = open_torchvision(name, layout, config.root, config.download,
                                   lambda root, split: cls(root, train=split == "train", download=config.download),
                                   ("train", "test"))
    splits = [to_image_set(split.data, split.targets, "NHWC", name) for split in (train, test)]
    return DataSplits(*splits, num_classes=len(train.classes), class_names=list(train.classes), name=name)


def load_cifar10(config) -> DataSplits:
    return load_cifar(config, classes=10)


def load_cifar100(config) -> DataSplits:
    return load_cifar(config, classes=100)


def load_svhn(config) -> DataSplits:
    from torchvision import datasets

    splits = ("train", "test", "extra") if config.extra else ("train", "test")
    layout = Layout("SVHN", tuple(SVHN_SPLITS[s] for s in splits))
    # torchvision's SVHN reads its .mat files straight from the root it is given; rtk gives it
    # ROOT/SVHN so that one data root can hold every dataset side by side.
    # Labels come back as 0..9: torchvision already maps the files' digit-0 label 10 to 0.
    opened = open_torchvision("svhn", layout, config.root, config.download,
                              lambda root, split: datasets.SVHN(os.path.join(root, "SVHN"), split=split,
                                                                download=config.download),
                              splits)
    sets = {s: to_image_set(d.data, d.labels, "NCHW", "svhn") for s, d in zip(splits, opened)}
    train = sets["train"]
    if config.extra:
        train = ImageSet(torch.cat([train.images, sets["extra"].images]),
                         torch.cat([train.labels, sets["extra"].labels]))
    return DataSplits(train, sets["test"], num_classes=10, class_names=[str(i) for i in range(10)], name="svhn")


def read_rgb(path: str):
    """ImageFolder's loader, with an unreadable image reported as a DataError naming the file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"imagefolder: cannot read image {path} ({_cause(exc)}); replace or delete the file") from None


def load_imagefolder(config) -> DataSplits:
    from torchvision import datasets, transforms

    root = Path(config.root).expanduser().resolve()
    layout = (f"ROOT/{config.train_dir}/CLASS/IMAGE and ROOT/{config.test_dir}/CLASS/IMAGE, one folder per class "
              f"(e.g. {config.train_dir}/cat/001.png)")
    if not root.is_dir():
        raise DataError(f"imagefolder: root {root} is not a folder; rtk expects {layout}; point root at it")
    for key, sub in (("train_dir", config.train_dir), ("test_dir", config.test_dir)):
        if not (root / sub).is_dir():
            has_val = key == "test_dir" and (root / "val").is_dir()
            hint = ' (there is a "val" folder: set test_dir = "val")' if has_val else ""
            raise DataError(f"imagefolder: {root / sub} is not a folder{hint}; rtk expects {layout}; "
                            f"point root at the dataset or set {key}")
    # Resize + center crop give every image the same shape, so batches stack; the generic image_size resize of
    # rtk.data.apply_options then finds them at that size already, and channels converts these RGB tensors.
    transform = transforms.Compose([transforms.Resize(config.image_size), transforms.CenterCrop(config.image_size),
                                    transforms.ToTensor()])
    opened = []
    for sub in (config.train_dir, config.test_dir):
        try:
            opened.append(datasets.ImageFolder(str(root / sub), transform=transform, loader=read_rgb))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"imagefolder: no images in {root / sub} ({_cause(exc)}); rtk expects {layout}") from None
    train, test = opened
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise DataError(f"imagefolder: {root / config.test_dir} has classes that {root / config.train_dir} lacks: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; use the same class folders in"
                        " both")
    # The test folder may hold a subset of the classes; its labels must use the training ids.
    to_train_id = torch.tensor([train.class_to_idx[c] for c in test.classes], dtype=torch.long)
    test_labels = to_train_id[torch.tensor(test.targets, dtype=torch.long)]
    return DataSplits(FileImageSet(train, torch.tensor(train.targets, dtype=torch.long)),
                      FileImageSet(test, test_labels),
                      num_classes=len(train.classes), class_names=list(train.classes), name="imagefolder")
