"""The study's recipes (recipes/study_table{2,3,5}.toml) use the study's preprocessing and its final-layer
BatchNorm policy (Vaishnavi, Eykholt, Rahmati, "A study of the effects of transfer learning on adversarial
robustness", TMLR 2024; code: Ethos-lab/transfer_learning_for_adversarial_robustness)."""
from __future__ import annotations

import pytest

from rtk.config.recipe import load_recipe
from rtk.config.spec import resolve
from rtk.registry import default_registry
from tests.helpers import REPO

STUDY_DATASETS = {"food101", "sun397", "caltech101", "caltech256", "stanford-cars", "fgvc-aircraft", "dtd",
                  "oxford-pets", "flowers102"}


@pytest.mark.parametrize("table", ["study_table2", "study_table3"])
def test_each_target_is_augmented_once_as_the_study_does(table):
    """The torchvision tasks crop and flip as they read (RandomResizedCrop(224) + flip on the decoded image,
    Resize(256) + CenterCrop(224) for testing), so their runs add no batch augmentation; CIFAR and Birdsnap,
    read as 224-px squares, get the batch RandomResizedCrop + flip."""
    specs = resolve(load_recipe(REPO / "recipes" / f"{table}.toml"), default_registry())
    seen = set()
    for spec in specs:
        name, config, augment = spec.target.name, spec.target.config, spec.transfer.config.augment
        seen.add(name)
        if name in STUDY_DATASETS:
            assert augment == "none", name
            assert (config.image_size, config.resize, config.train_transform) == (224, 256,
                                                                                 "random-resized-crop-flip")
        else:
            assert augment == "resized-crop-flip", name
            assert config.image_size == 224
        if name in ("caltech101", "caltech256"):
            assert (config.per_class_split, config.train_per_class) == ("first", 30 if name == "caltech101" else 60)
    assert seen == STUDY_DATASETS | {"cifar10", "cifar100", "imagefolder"}


def test_table5_probes_with_the_study_bn_policy():
    for spec in resolve(load_recipe(REPO / "recipes" / "study_table5.toml"), default_registry()):
        cfg = spec.transfer.config
        assert spec.transfer.name == "linear-probe"
        assert (cfg.frozen_bn_stats, cfg.augment) == ("batch", "resized-crop-flip")


def test_mini_last_layer_recipe_uses_the_study_bn_policy():
    for spec in resolve(load_recipe(REPO / "recipes" / "mini" / "study_last_layer.toml"), default_registry()):
        assert spec.transfer.name == "retrain-last-k" and spec.transfer.config.frozen_bn_stats == "batch"
