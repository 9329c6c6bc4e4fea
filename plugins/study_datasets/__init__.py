"""The downstream tasks of the transfer study (Vaishnavi, Eykholt, Rahmati, "A study of the effects
of transfer learning on adversarial robustness", TMLR 2024, openreview.net/forum?id=T6RygOFZ6B; code:
github.com/Ethos-lab/transfer_learning_for_adversarial_robustness), i.e. the Kornblith et al. suite
("Do Better ImageNet Models Transfer Better?", arXiv:1805.08974) that torchvision can read:
``food101``, ``sun397``, ``caltech101``, ``caltech256``, ``stanford-cars``, ``fgvc-aircraft``,
``dtd``, ``oxford-pets`` and ``flowers102``. CIFAR-10/100 are the ``cifar10``/``cifar100``
datasets; Birdsnap, which torchvision does not provide, goes through ``imagefolder``.

torchvision's dataset classes parse the files; images are decoded lazily, one at a time, with the
study's transforms by default (empirical/robustness/transfer_utils/constants.py and
certified/transfer_datasets.py of the study's code): test images Resize(256) + CenterCrop(224),
training images RandomResizedCrop(224) + RandomHorizontalFlip on the decoded image, drawn anew each
time an image is read (so a recipe sets ``augment = "none"`` in [transfer] for these datasets). A
strategy that caches features reads the training images through the test transform (the split's
``unaugmented`` view). Files are read from ``root`` (else $RTK_DATA, else $RTK_HOME/data); nothing
is downloaded unless ``download = true`` (``rtk run --download`` sets it).

The shared ``image_size`` and ``channels`` options (rtk.config.schema.DatasetConfig) mean what they
mean for every dataset, except that ``image_size`` keeps the study's default, 224, and is reached by
the crops above, never by stretching the whole image; ``channels`` (unset: RGB, grayscale files
converted to RGB as the study does) converts each image after its transform (rtk.data.convert_images).

Splits (Kornblith et al. Table A1; the study follows them):
- official train/test where the dataset has one: Food-101 train/test; Stanford Cars train/test;
  FGVC-Aircraft trainval/test (variant level, 100 classes); DTD train+val/test of partition 1;
  Oxford-IIIT Pets trainval/test; Flowers-102 train+val/test;
- a per-class split where it has none: Caltech-101 the first 30 images of each class (file order,
  image_0001.jpg on), Caltech-256 the first 60, as the study's code takes them
  (certified/transfer_datasets.py _caltech101/_caltech256), and every other image of a class for
  testing; SUN397 50 training and 50 test images per class drawn with a fixed seed (the size of
  Kornblith's split 1, which the study reads from prepared folders).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import rtk
from rtk.config import DatasetConfig, option

_ROOT_HELP = "data root holding {layout} (default: $RTK_DATA, else the source store's data/ folder, $RTK_HOME/data)"
_DOWNLOAD_HELP = "let torchvision fetch the files into root when missing (needs network access; never done unless set)"
_SIZE_HELP = ("side of the square images, reached as the study does rather than by stretching: the training crop"
              " (RandomResizedCrop) and the test center crop after resizing the short side to resize (the model may"
              " resize again; it cannot be unset)")
_RESIZE_HELP = ("test images (and the un-augmented view of the training images): resize the short side to this many"
                " pixels, then center-crop image_size (the study: Resize(256) + CenterCrop(224); resize = image_size"
                " keeps the whole short side)")
_TRAIN_TRANSFORM_HELP = (
    "training images: random-resized-crop-flip (the study's RandomResizedCrop(image_size), scale 0.08-1, aspect"
    " 3/4-4/3, + horizontal flip, on the decoded image, drawn anew each time it is read, so the transfer table sets"
    " augment = \"none\") or center-crop (the test transform, no augmentation)")


@dataclass
class StudyImageConfig(DatasetConfig):
    """Options of a file-backed torchvision dataset of the study, with its transforms
    (Ethos-lab/transfer_learning_for_adversarial_robustness, certified/transfer_datasets.py). Defaults:
    root = $RTK_DATA, download = false, image_size = 224, resize = 256, train_transform =
    "random-resized-crop-flip", channels unset (3, RGB)."""

    dataset: ClassVar[str]  # the registered name, by which rtk_plugins.study_datasets.torchvision_data reads the files
    resizes_itself: ClassVar[bool] = True  # the study's transforms crop to image_size (rtk.config.schema.DatasetConfig)

    root: str | None = option(None, path=True, key=False,
                              help=_ROOT_HELP.format(layout="the dataset's folder (see the dataset's description)"))
    download: bool = option(False, key=False, help=_DOWNLOAD_HELP)
    image_size: int = option(224, min=1, max=4096, help=_SIZE_HELP)
    resize: int = option(256, min=1, max=8192, help=_RESIZE_HELP)
    train_transform: Literal["random-resized-crop-flip", "center-crop"] = option(
        "random-resized-crop-flip", help=_TRAIN_TRANSFORM_HELP)

    def __post_init__(self):
        if self.resize < self.image_size:
            raise ValueError(f"resize = {self.resize} is smaller than image_size = {self.image_size}: the center crop"
                             " would pad the image; set resize >= image_size (the study: 256 and 224)")


@dataclass
class Food101Config(StudyImageConfig):
    """Food-101 (Bossard et al. 2014): 101 classes, official 75,750 train / 25,250 test, from
    ROOT/food-101/{meta/train.json, meta/test.json, images/}. Defaults: root = $RTK_DATA, download = false,
    image_size = 224, resize = 256, train_transform = "random-resized-crop-flip"."""

    dataset: ClassVar[str] = "food101"


@dataclass
class StanfordCarsConfig(StudyImageConfig):
    """Stanford Cars (Krause et al. 2013): 196 classes, official 8,144 train / 8,041 test, from
    ROOT/stanford_cars/{devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat}
    (torchvision's download URL no longer works: fetch the files by hand). Defaults: root = $RTK_DATA,
    download = false, image_size = 224, resize = 256, train_transform = "random-resized-crop-flip"."""

    dataset: ClassVar[str] = "stanford-cars"


@dataclass
class AircraftConfig(StudyImageConfig):
    """FGVC-Aircraft 2013b (Maji et al. 2013): official trainval (6,667) / test (3,333) at the variant
    level (100 classes), from ROOT/fgvc-aircraft-2013b/data/. Defaults: root = $RTK_DATA,
    download = false, image_size = 224, resize = 256, train_transform = "random-resized-crop-flip",
    annotation_level = "variant"."""

    dataset: ClassVar[str] = "fgvc-aircraft"

    annotation_level: Literal["variant", "family", "manufacturer"] = option("variant", help=(
        "label granularity: 100 variants (Kornblith et al.), 70 families or 30 manufacturers"))


@dataclass
class DtdConfig(StudyImageConfig):
    """Describable Textures (Cimpoi et al. 2014): 47 classes; train = train + val of the partition
    (3,760), test = its test list (1,880), from ROOT/dtd/dtd/{images/, labels/}. Defaults:
    root = $RTK_DATA, download = false, image_size = 224, resize = 256, train_transform =
    "random-resized-crop-flip", partition = 1."""

    dataset: ClassVar[str] = "dtd"

    partition: int = option(1, min=1, max=10, help=(
        "which of DTD's 10 official train/val/test partitions (Kornblith et al. use 1)"))


@dataclass
class PetsConfig(StudyImageConfig):
    """Oxford-IIIT Pets (Parkhi et al. 2012): 37 breeds, official trainval (3,680) / test (3,669),
    from ROOT/oxford-iiit-pet/{images/, annotations/}. Defaults: root = $RTK_DATA, download = false,
    image_size = 224, resize = 256, train_transform = "random-resized-crop-flip"."""

    dataset: ClassVar[str] = "oxford-pets"


@dataclass
class FlowersConfig(StudyImageConfig):
    """Oxford Flowers-102 (Nilsback & Zisserman 2008): 102 classes; train = train + val (2,040),
    test = the official test set (6,149), from ROOT/flowers-102/{jpg/, imagelabels.mat, setid.mat}
    (torchvision checks the .mat files' md5). Defaults: root = $RTK_DATA, download = false, image_size = 224,
    resize = 256, train_transform = "random-resized-crop-flip"."""

    dataset: ClassVar[str] = "flowers102"


_FIRST_HELP = ("how each class's training images are chosen: first (the first train_per_class images in the"
               " dataset's file order, as the study's code takes Caltech's) or seeded (a random draw with split_seed);"
               " the rest are test images")


@dataclass
class PerClassSplitConfig(StudyImageConfig):
    """A dataset without an official split, split per class here."""

    per_class_split: Literal["first", "seeded"] = option("first", help=_FIRST_HELP)
    train_per_class: int = option(30, min=1, help="training images per class; the rest are test images")
    test_per_class: int | None = option(None, min=1, help=(
        "test images per class, taken from the rest (first: in file order; seeded: drawn; unset: all the rest)"))
    split_seed: int = option(0, min=0, max=2**63 - 1, help=(
        "seed of the seeded train/test draw (independent of the run seed and of seed)"))


@dataclass
class Caltech101Config(PerClassSplitConfig):
    """Caltech-101 (Fei-Fei et al. 2004): torchvision's 101 categories (BACKGROUND_Google dropped,
    as the study's code does; Kornblith et al. keep it as a 102nd class), the first 30 images of each
    class (image_0001.jpg to image_0030.jpg) for training and every other image for testing, as the
    study's code (Ethos-lab/transfer_learning_for_adversarial_robustness, certified/transfer_datasets.py,
    _caltech101) splits it, from
    ROOT/caltech101/101_ObjectCategories/. Defaults: root = $RTK_DATA, download = false,
    image_size = 224, resize = 256, train_transform = "random-resized-crop-flip", per_class_split =
    "first", train_per_class = 30, test_per_class = all the rest."""

    dataset: ClassVar[str] = "caltech101"


@dataclass
class Caltech256Config(PerClassSplitConfig):
    """Caltech-256 (Griffin et al. 2007): 257 categories (the clutter class included, as Kornblith
    et al. and the study's code), the first 60 images of each class (NNN_0001.jpg to NNN_0060.jpg)
    for training and every other image for testing, as the study's code
    (Ethos-lab/transfer_learning_for_adversarial_robustness, certified/transfer_datasets.py, _caltech256)
    splits it, from ROOT/caltech256/256_ObjectCategories/. Defaults: root = $RTK_DATA,
    download = false, image_size = 224, resize = 256, train_transform = "random-resized-crop-flip",
    per_class_split = "first", train_per_class = 60, test_per_class = all the rest."""

    dataset: ClassVar[str] = "caltech256"

    train_per_class: int = option(60, min=1, help="training images per class; the rest are test images")


@dataclass
class Sun397Config(PerClassSplitConfig):
    """SUN397 (Xiao et al. 2010): 397 scene classes, 50 training and 50 test images per class drawn
    here with a fixed seed (the size of Kornblith et al.'s split 1, which the study's code reads from
    prepared SUN397/splits_01 folders; torchvision does not read the official partition files), from
    ROOT/SUN397/{ClassName.txt, a/abbey/sun_*.jpg, ...}. Defaults: root = $RTK_DATA, download = false,
    image_size = 224, resize = 256, train_transform = "random-resized-crop-flip", per_class_split =
    "seeded", train_per_class = 50, test_per_class = 50, split_seed = 0."""

    dataset: ClassVar[str] = "sun397"

    per_class_split: Literal["first", "seeded"] = option("seeded", help=_FIRST_HELP)
    train_per_class: int = option(50, min=1, help="training images per class; the rest are test images")
    test_per_class: int | None = option(50, min=1, help=(
        "test images per class, taken from the rest (first: in file order; seeded: drawn; unset: all the rest)"))


# name -> (config, summary); each config class carries its registered name.
DATASETS = {config.dataset: (config, summary) for config, summary in [
    (Food101Config, "Food-101, 101 classes, official train/test, from ROOT/food-101 (root or RTK_DATA)"),
    (Sun397Config, "SUN397 scenes, 397 classes, seeded 50/50 per-class split, from ROOT/SUN397"),
    (Caltech101Config, "Caltech-101, 101 classes, first 30 train per class, from ROOT/caltech101"),
    (Caltech256Config, "Caltech-256, 257 classes, first 60 train per class, from ROOT/caltech256"),
    (StanfordCarsConfig, "Stanford Cars, 196 classes, official train/test, from ROOT/stanford_cars"),
    (AircraftConfig, "FGVC-Aircraft, 100 variants, official trainval/test, from ROOT/fgvc-aircraft-2013b"),
    (DtdConfig, "Describable Textures, 47 classes, train+val/test of partition 1, from ROOT/dtd/dtd"),
    (PetsConfig, "Oxford-IIIT Pets, 37 breeds, official trainval/test, from ROOT/oxford-iiit-pet"),
    (FlowersConfig, "Oxford Flowers-102, 102 classes, train+val/test, from ROOT/flowers-102"),
]}


@rtk.hookimpl
def register_datasets(register):
    for name, (config, summary) in DATASETS.items():
        register(name, "rtk_plugins.study_datasets.torchvision_data:load", config=config, summary=summary)
