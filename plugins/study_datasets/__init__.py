"""The downstream tasks of the transfer study (Vaishnavi, Eykholt, Rahmati, "A study of the effects
of transfer learning on adversarial robustness", TMLR 2024), i.e. the Kornblith et al. suite ("Do
Better ImageNet Models Transfer Better?", arXiv:1805.08974) that torchvision can read:
``food101``, ``sun397``, ``caltech101``, ``caltech256``, ``stanford-cars``, ``fgvc-aircraft``,
``dtd``, ``oxford-pets`` and ``flowers102``. CIFAR-10/100 are the ``cifar10``/``cifar100``
datasets; Birdsnap, which torchvision does not provide, goes through ``imagefolder``.

torchvision's dataset classes parse the files; images are decoded lazily, one at a time, and
resized (short side to ``image_size``, then center-cropped to a square) so that batches stack.
Files are read from ``root`` (else $RTK_DATA, else $RTK_HOME/data); nothing is downloaded unless
``download = true`` (``rtk run --download`` sets it).

Splits (Kornblith et al. Table A1; the study follows them):
- official train/test where the dataset has one: Food-101 train/test; Stanford Cars train/test;
  FGVC-Aircraft trainval/test (variant level, 100 classes); DTD train+val/test of partition 1;
  Oxford-IIIT Pets trainval/test; Flowers-102 train+val/test;
- a seeded per-class split where it has none: Caltech-101 30 train images per class, Caltech-256
  60, SUN397 50 (and 50 test images per class, as Kornblith's SUN397 split 1); the other images of
  a class are its test images (all of them for Caltech, ``test_per_class`` for SUN397).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import rtk
from rtk.config import DatasetConfig, option

_ROOT_HELP = "data root holding {layout} (default: $RTK_DATA, else the source store's data/ folder, $RTK_HOME/data)"
_DOWNLOAD_HELP = "let torchvision fetch the files into root when missing (needs network access; never done unless set)"
_SIZE_HELP = ("resize the short side to this many pixels, then center-crop a square, so batches stack (the model may"
              " resize again)")


@dataclass
class StudyImageConfig(DatasetConfig):
    """Options of a file-backed torchvision dataset. Defaults: root = $RTK_DATA, download = false, image_size = 224."""

    dataset: ClassVar[str]  # the registered name, by which rtk_plugins.study_datasets.torchvision_data reads the files

    root: str | None = option(None, path=True, key=False,
                              help=_ROOT_HELP.format(layout="the dataset's folder (see the dataset's description)"))
    download: bool = option(False, key=False, help=_DOWNLOAD_HELP)
    image_size: int = option(224, min=1, max=4096, help=_SIZE_HELP)


@dataclass
class Food101Config(StudyImageConfig):
    """Food-101 (Bossard et al. 2014): 101 classes, official 75,750 train / 25,250 test, from
    ROOT/food-101/{meta/train.json, meta/test.json, images/}. Defaults: root = $RTK_DATA, download = false,
    image_size = 224."""

    dataset: ClassVar[str] = "food101"


@dataclass
class StanfordCarsConfig(StudyImageConfig):
    """Stanford Cars (Krause et al. 2013): 196 classes, official 8,144 train / 8,041 test, from
    ROOT/stanford_cars/{devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat}
    (torchvision's download URL no longer works: fetch the files by hand). Defaults: root = $RTK_DATA,
    download = false, image_size = 224."""

    dataset: ClassVar[str] = "stanford-cars"


@dataclass
class AircraftConfig(StudyImageConfig):
    """FGVC-Aircraft 2013b (Maji et al. 2013): official trainval (6,667) / test (3,333) at the variant
    level (100 classes), from ROOT/fgvc-aircraft-2013b/data/. Defaults: root = $RTK_DATA,
    download = false, image_size = 224, annotation_level = "variant"."""

    dataset: ClassVar[str] = "fgvc-aircraft"

    annotation_level: Literal["variant", "family", "manufacturer"] = option("variant", help=(
        "label granularity: 100 variants (Kornblith et al.), 70 families or 30 manufacturers"))


@dataclass
class DtdConfig(StudyImageConfig):
    """Describable Textures (Cimpoi et al. 2014): 47 classes; train = train + val of the partition
    (3,760), test = its test list (1,880), from ROOT/dtd/dtd/{images/, labels/}. Defaults:
    root = $RTK_DATA, download = false, image_size = 224, partition = 1."""

    dataset: ClassVar[str] = "dtd"

    partition: int = option(1, min=1, max=10, help=(
        "which of DTD's 10 official train/val/test partitions (Kornblith et al. use 1)"))


@dataclass
class PetsConfig(StudyImageConfig):
    """Oxford-IIIT Pets (Parkhi et al. 2012): 37 breeds, official trainval (3,680) / test (3,669),
    from ROOT/oxford-iiit-pet/{images/, annotations/}. Defaults: root = $RTK_DATA, download = false,
    image_size = 224."""

    dataset: ClassVar[str] = "oxford-pets"


@dataclass
class FlowersConfig(StudyImageConfig):
    """Oxford Flowers-102 (Nilsback & Zisserman 2008): 102 classes; train = train + val (2,040),
    test = the official test set (6,149), from ROOT/flowers-102/{jpg/, imagelabels.mat, setid.mat}
    (torchvision checks the .mat files' md5). Defaults: root = $RTK_DATA, download = false, image_size = 224."""

    dataset: ClassVar[str] = "flowers102"


@dataclass
class SeededSplitConfig(StudyImageConfig):
    """A dataset without an official split, split per class here with a fixed seed."""

    train_per_class: int = option(30, min=1, help=(
        "training images per class, drawn at random (seeded); the rest are test images"))
    test_per_class: int | None = option(None, min=1, help=(
        "test images per class, drawn from the rest (unset: all the rest)"))
    split_seed: int = option(0, min=0, max=2**63 - 1, help=(
        "seed of the train/test draw (independent of the run seed and of seed)"))


@dataclass
class Caltech101Config(SeededSplitConfig):
    """Caltech-101 (Fei-Fei et al. 2004): torchvision's 101 categories (BACKGROUND_Google dropped;
    Kornblith et al. keep it as a 102nd class), 30 random training images per class and every other
    image for testing, from ROOT/caltech101/101_ObjectCategories/. Defaults: root = $RTK_DATA,
    download = false, image_size = 224, train_per_class = 30, test_per_class = all the rest, split_seed = 0."""

    dataset: ClassVar[str] = "caltech101"


@dataclass
class Caltech256Config(SeededSplitConfig):
    """Caltech-256 (Griffin et al. 2007): 257 categories (the clutter class included, as Kornblith
    et al.), 60 random training images per class and every other image for testing, from
    ROOT/caltech256/256_ObjectCategories/. Defaults: root = $RTK_DATA, download = false,
    image_size = 224, train_per_class = 60, test_per_class = all the rest, split_seed = 0."""

    dataset: ClassVar[str] = "caltech256"

    train_per_class: int = option(60, min=1, help=(
        "training images per class, drawn at random (seeded); the rest are test images"))


@dataclass
class Sun397Config(SeededSplitConfig):
    """SUN397 (Xiao et al. 2010): 397 scene classes, 50 training and 50 test images per class drawn
    here with a fixed seed (the size of Kornblith et al.'s split 1; torchvision does not read the
    official partition files), from ROOT/SUN397/{ClassName.txt, a/abbey/sun_*.jpg, ...}. Defaults:
    root = $RTK_DATA, download = false, image_size = 224, train_per_class = 50, test_per_class = 50, split_seed = 0."""

    dataset: ClassVar[str] = "sun397"

    train_per_class: int = option(50, min=1, help="training images per class, drawn at random (seeded)")
    test_per_class: int | None = option(50, min=1, help=(
        "test images per class, drawn from the rest (unset: all the rest)"))


# name -> (config, summary); each config class carries its registered name.
DATASETS = {config.dataset: (config, summary) for config, summary in [
    (Food101Config, "Food-101, 101 classes, official train/test, from ROOT/food-101 (root or RTK_DATA)"),
    (Sun397Config, "SUN397 scenes, 397 classes, seeded 50/50 per-class split, from ROOT/SUN397"),
    (Caltech101Config, "Caltech-101, 101 classes, seeded 30 train per class, from ROOT/caltech101"),
    (Caltech256Config, "Caltech-256, 257 classes, seeded 60 train per class, from ROOT/caltech256"),
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
