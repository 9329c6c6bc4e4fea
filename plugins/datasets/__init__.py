"""Built-in datasets. Every image is returned in [0, 1]; shared options come from rtk.config.schema.DatasetConfig,
among them ``image_size`` and ``channels``, which every dataset here takes with the same meaning (rtk applies
them as images are read, rtk.data.convert_images); only ``imagefolder`` gives image_size its own default (224)
and crops instead of stretching, since its images come in every size and shape.

The torchvision datasets read local files under a data root (``root``, else $RTK_DATA, else
$RTK_HOME/data) and only download when ``download = true`` (``rtk run --download`` sets it); see
rtk_plugins.datasets.vision_data for the expected layouts (``digits`` comes from
rtk_plugins.datasets.digits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import rtk
from rtk.config import DatasetConfig, option

_ROOT_HELP = "data root holding {layout} (default: $RTK_DATA, else the source store's data/ folder, $RTK_HOME/data)"
_DOWNLOAD_HELP = "fetch the files into root when missing (needs network access; never done unless set)"


@dataclass
class DigitsConfig(DatasetConfig):
    """scikit-learn's bundled 8x8 digits (1,797 images, 1 channel), split into train and test here. Defaults:
    test_fraction = 0.3, image_size and channels unset (1x8x8 as stored; e.g. image_size = 32, channels = 3 for
    an RGB model)."""

    test_fraction: float = option(0.3, min=0.05, max=0.9, help=(
        "fraction of each class held out as the test set (stratified, fixed seed 0)"))


@dataclass
class MnistConfig(DatasetConfig):
    """MNIST (60,000 train / 10,000 test, 1x28x28) from ROOT/MNIST/raw/ (the IDX files). Defaults:
    root = $RTK_DATA, download = false, image_size and channels unset (1x28x28 as stored; the images stay
    28-px uint8 in memory whatever image_size says, each batch is resized as it is read)."""

    root: str | None = option(None, path=True, key=False, help=_ROOT_HELP.format(layout="MNIST/raw/*-ubyte"))
    download: bool = option(False, key=False, help=_DOWNLOAD_HELP)


@dataclass
class CifarConfig(DatasetConfig):
    """CIFAR-10 / CIFAR-100 (50,000 train / 10,000 test, 3x32x32) from torchvision's python
    batches (ROOT/cifar-10-batches-py/ or ROOT/cifar-100-python/). Defaults: root = $RTK_DATA,
    download = false, image_size and channels unset (3x32x32 as stored). The transfer study reads them at
    image_size = 224, so that attacks and smoothing noise act at 224 px; unset, a model that resizes inside
    sees 32-px perturbations, where an L2 radius means far more."""

    root: str | None = option(None, path=True, key=False,
                              help=_ROOT_HELP.format(layout="cifar-10-batches-py/ or cifar-100-python/"))
    download: bool = option(False, key=False, help=_DOWNLOAD_HELP)
    # CIFAR had image_size before the shared option: always in the key, so its stored sources keep their keys.
    image_size: int | None = option(None, min=1, max=4096, help=DatasetConfig.__dataclass_fields__[
        "image_size"].metadata["help"])


@dataclass
class SvhnConfig(DatasetConfig):
    """SVHN digits (73,257 train / 26,032 test, 3x32x32) from ROOT/SVHN/{train,test}_32x32.mat.
    Defaults: root = $RTK_DATA, download = false, extra = false, image_size and channels unset (3x32x32)."""

    root: str | None = option(None, path=True, key=False,
                              help=_ROOT_HELP.format(layout="SVHN/train_32x32.mat and SVHN/test_32x32.mat"))
    download: bool = option(False, key=False, help=_DOWNLOAD_HELP)
    extra: bool = option(False, help="add the 531,131 'extra' images (SVHN/extra_32x32.mat) to the training set")


@dataclass(kw_only=True)
class ImageFolderConfig(DatasetConfig):
    """Images in class folders: ROOT/train/CLASS/*.png and ROOT/test/CLASS/*.png, read lazily from
    disk as RGB. Defaults: train_dir = "train", test_dir = "test", image_size = 224 (short side, then center
    crop), channels unset (3, RGB); root is required."""

    resizes_itself: ClassVar[bool] = True  # its transform crops to image_size (rtk.config.schema.DatasetConfig)

    root: str = option(path=True, help="folder holding train_dir and test_dir, each with one subfolder per class")
    train_dir: str = option("train", help="training folder inside root (one subfolder of images per class)")
    test_dir: str = option("test", help=(
        'test folder inside root, with the same class subfolders (e.g. "val" for ImageNet-style layouts)'))
    image_size: int = option(224, min=1, max=4096, help=(
        "images come in every size and shape, so here image_size x image_size is reached by resizing the short side"
        " to image_size (bilinear, antialiased), then center-cropping a square, which keeps the aspect ratio"
        " (it cannot be unset)"))


@rtk.hookimpl
def register_datasets(register):
    register("digits", "rtk_plugins.datasets.digits:load_digits", config=DigitsConfig,
             summary="scikit-learn's bundled 8x8 handwritten digits (offline; 1,797 images)")
    register("mnist", "rtk_plugins.datasets.vision_data:load_mnist", config=MnistConfig,
             summary="MNIST 28x28 digits from ROOT/MNIST/raw (root, RTK_DATA or $RTK_HOME/data; --download fetches it)",
             sizes=(60_000, 10))
    for classes, folder in [(10, "cifar-10-batches-py"), (100, "cifar-100-python")]:
        register(f"cifar{classes}", f"rtk_plugins.datasets.vision_data:load_cifar{classes}", config=CifarConfig,
                 summary=f"CIFAR-{classes} 32x32, {classes} classes, from ROOT/{folder} (root or RTK_DATA)",
                 sizes=(50_000, classes))
    register("svhn", "rtk_plugins.datasets.vision_data:load_svhn", config=SvhnConfig,
             summary="SVHN 32x32 house-number digits from ROOT/SVHN/*_32x32.mat (root or RTK_DATA)",
             sizes=(73_257, 10))
    register("imagefolder", "rtk_plugins.datasets.vision_data:load_imagefolder", config=ImageFolderConfig,
             summary="your own images: ROOT/train/CLASS/* and ROOT/test/CLASS/*, resized and center-cropped")
