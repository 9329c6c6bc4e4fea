"""Built-in training objectives: natural cross-entropy and Madry PGD adversarial training."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.configs import option


@dataclass
class NaturalConfig:
    """Natural training: mean cross-entropy on clean images (no options)."""


@dataclass
class PGDATConfig:
    """PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", arXiv:1706.06083): min over weights of the cross-entropy at the PGD
    point. Defaults: the CIFAR recipe, Linf eps 8/255, 7 steps of 2/255, random start, inner
    attack with BN in eval mode (as the PyTorch ports of CARTL, RoLI and TRADES do; Madry's TF
    code attacks in train mode: set ``attack_mode = "train"``)."""

    norm: Literal["Linf", "L2"] = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help="training radius in [0, 1] pixel units")
    steps: int = option(7, min=1, help="inner PGD steps")
    alpha: float | None = option(2 / 255, min=0.0, help="inner step size (unset: eps/4 for Linf, 2.5*eps/steps for L2)")
    random_start: bool = option(True, help="inner attack starts uniformly at random in the ball")
    attack_mode: Literal["eval", "train"] = option("eval", help="BN/dropout mode while crafting the inner attack (train also updates BN running statistics)")
    eps_ramp: float = option(0.0, min=0.0, max=1.0, help="fraction of training over which eps (and the step) grow linearly from 0 to eps")
    mix_clean: float = option(0.0, min=0.0, max=1.0, help="weight of the clean-image loss (0 = pure adversarial training)")


def make_natural(config: NaturalConfig):
    from rtk.training import CrossEntropy

    return CrossEntropy()


def make_pgd_at(config: PGDATConfig):
    from rtk_plugins._lib.adversarial_training import PGDAdversarialTraining

    return PGDAdversarialTraining(config)


@rtk.hookimpl
def register_objectives(register):
    register("natural", make_natural, config=NaturalConfig, summary="Natural training: cross-entropy on clean images")
    register("pgd-at", make_pgd_at, config=PGDATConfig, summary="Madry PGD adversarial training (Linf or L2), optional eps ramp")
