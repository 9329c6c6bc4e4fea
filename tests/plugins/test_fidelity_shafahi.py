"""Shafahi et al. recipes against the free-training code (issue 17, items 3 and 7):
shafahi_fig3.toml's from-scratch Free-AT budget and shafahi_table3.toml's augmented profile."""
from __future__ import annotations

import math

from rtk.config.recipe import load_recipe
from rtk.config.spec import resolve
from rtk.registry import default_registry
from tests.helpers import REPO

RECIPES = REPO / "recipes"


def reference_free_schedule(epochs: int, replays: int, drop_every: int = 30) -> tuple[int, list[int]]:
    """mahyarnajibi/FreeAdversarialTraining: main_free.py:47 runs ceil(epochs / m) epochs;
    lib/utils.py adjust_learning_rate sets lr * 0.1 ** (epoch // ceil(30 / m))."""
    run = math.ceil(epochs / replays)
    step = math.ceil(drop_every / replays)
    return run, [e for e in range(1, run) if e % step == 0]


def test_fig3_free_at_from_scratch_runs_the_reference_budget():
    points = [p for p in load_recipe(RECIPES / "shafahi_fig3.toml").points() if p.cases == ["free-at-scratch"]]
    assert len(points) == 7  # one per N
    for point in points:
        transfer = point.raw["transfer"]
        replays = transfer["objective"]["replays"]
        assert (transfer["objective"]["name"], replays) == ("free-at", 4)
        epochs, milestones = reference_free_schedule(90, replays)  # App. A.3: "90 epochs", /10 at 30 and 60
        assert (transfer["epochs"], [int(m) for m in transfer["milestones"]]) == (epochs, milestones) == (23, [8, 16])
        assert transfer["schedule"] == "multistep" and transfer.get("gamma", 0.1) == 0.1


def test_table3_augmented_profile_trains_the_same_head_on_augmented_images():
    source = ['sweep.source=[{model = "timm/resnet50", input_size = 224, num_classes = 1000}]']  # no import needed
    plain = resolve(load_recipe(RECIPES / "shafahi_table3.toml", None, source), default_registry())
    augmented = resolve(load_recipe(RECIPES / "shafahi_table3.toml", "augmented", source), default_registry())
    assert len(plain) == len(augmented) == 2
    for probe, head in zip(plain, augmented):
        assert (probe.transfer.component.name, probe.transfer.config.augment) == ("linear-probe", "none")
        assert head.transfer.component.name == "retrain-last-k"
        assert (head.transfer.config.k, head.transfer.config.augment) == (1, "crop-flip")
        for name in ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "milestones",
                     "gamma", "head_init"):
            assert getattr(head.transfer.config, name) == getattr(probe.transfer.config, name), name
