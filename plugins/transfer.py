"""Built-in transfer strategies: linear probe on cached frozen features, and fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.configs import option
from rtk.options import TrainConfig


@dataclass
class LinearProbeConfig(TrainConfig):
    """Linear probe on a frozen source (Shafahi et al., "Adversarially robust transfer
    learning", arXiv:1905.08232, Eq. 2): the backbone runs once in eval mode to cache the
    penultimate features of the un-augmented training set, then a fresh linear head is trained
    on the cache. Defaults: Adam, lr 1e-3, 20 epochs, batch 128, no weight decay."""

    epochs: int = option(20, min=0, help="passes over the cached features")
    head_init: Literal["default", "zeros", "uniform-unit-scaling"] = option("default", help="initialisation of the fresh head (uniform-unit-scaling is the TF init of Shafahi et al.'s code)")
    feature_batch_size: int = option(512, min=1, help="batch size of the one feature-extraction pass")

    def __post_init__(self):
        if self.augment != "none":
            raise ValueError("augment: a linear probe trains on features cached once, so batch augmentation cannot apply; use the finetune strategy with frozen layers instead")


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tune the whole source model on the target with the objective of
    ``[transfer.objective]`` (natural by default). Defaults: Adam, lr 1e-3, 10 epochs, a fresh
    head, BatchNorm trained normally."""

    reset_head: bool = option(True, help="replace the head with a fresh one sized for the target classes")
    head_init: Literal["default", "zeros", "uniform-unit-scaling"] = option("default", help="initialisation of the fresh head")
    bn: Literal["train", "frozen-stats", "frozen"] = option("train", help="BatchNorm: train (batch statistics, running statistics updated, affine trained), frozen-stats (running statistics used and kept, affine trained), frozen (statistics and affine fixed)")


def make_linear_probe(config: LinearProbeConfig):
    from rtk_plugins._lib.probe import LinearProbe

    return LinearProbe(config)


def make_finetune(config: FinetuneConfig):
    from rtk_plugins._lib.finetune import Finetune

    return Finetune(config)


@rtk.hookimpl
def register_transfer_strategies(register):
    register("linear-probe", make_linear_probe, config=LinearProbeConfig,
             summary="Frozen source, features cached once, fresh linear head trained on them")
    register("finetune", make_finetune, config=FinetuneConfig,
             summary="Fine-tune all weights with an objective, BatchNorm policy explicit")
