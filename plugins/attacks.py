"""Built-in attacks, wrapping torchattacks (models keep their normalization inside, so no
``set_normalization_used``: eps is in [0, 1] pixel units)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.configs import option


@dataclass
class PGDConfig:
    """Projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", arXiv:1706.06083). Defaults: Linf, eps 8/255, 20 steps of eps/4,
    one random start (the PGD-20 of Shafahi et al. 2020)."""

    norm: Literal["Linf", "L2"] = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help='radius in [0, 1] pixel units; fractions like "8/255" are exact')
    steps: int = option(20, min=0, help="gradient steps")
    alpha: float | None = option(None, min=0.0, help="step size (default eps/4 for Linf, 2.5*eps/steps for L2)")
    random_start: bool = option(True, help="start from a uniform random point of the ball")
    restarts: int = option(1, min=1, help="random restarts; an example counts as broken if any restart breaks it")


def make_pgd(config: PGDConfig):
    """PGD on the cross-entropy loss, Linf or L2 (torchattacks.PGD / PGDL2)."""
    from rtk_plugins._lib.pgd import PGDAttack

    return PGDAttack(config)


@rtk.hookimpl
def register_attacks(register):
    register("pgd", make_pgd, config=PGDConfig, summary="PGD on cross-entropy, Linf or L2, random start and restarts (torchattacks)")
