"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv:2003.01690) as the rtk attack ``autoattack``.

The reference implementation (package ``pyautoattack``) runs by default; torchattacks' port
only with the standard settings forced (see rtk_plugins._lib.autoattack_backend). AutoAttack's
own checks (randomised forward pass, softmax output, zero gradients, too few classes, dynamic
defence, Square beating the white-box attacks) come back as flags from ``diagnostics()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.configs import option

AttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


@dataclass
class AutoAttackConfig:
    """AutoAttack (Croce & Hein, arXiv:2003.01690). Defaults: Linf, eps 8/255, the standard
    version (APGD-CE, APGD-T with 9 target classes, FAB-T with 9 target classes, Square with
    5000 queries; 100 iterations and one restart each), the reference implementation,
    seed 0.

    ``custom`` runs ``attacks_to_run`` with AutoAttack's constructor settings: APGD-CE/APGD-DLR
    and FAB untargeted with 5 restarts, APGD-T and FAB-T with 1 restart per target class,
    100 iterations, Square 1 restart of 5000 queries. ``n_restarts`` and ``iterations`` change
    those for ``custom`` only: the named versions are protocols, so they stay fixed.
    """

    norm: Literal["Linf", "L2"] = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help='radius in [0, 1] pixel units; fractions like "8/255" are exact')
    version: Literal["standard", "plus", "rand", "custom"] = option(
        "standard", help="standard: APGD-CE, APGD-T, FAB-T, Square; plus: adds APGD-DLR and FAB, 5 restarts; "
                         "rand: APGD-CE and APGD-DLR with EOT over 20 draws, for randomised models; custom: attacks_to_run")
    attacks_to_run: list[AttackName] = option(
        default_factory=list, help='custom only: attacks in the order they run, e.g. ["apgd-ce", "square"]')
    backend: Literal["pyautoattack", "torchattacks"] = option(
        "pyautoattack", help="pyautoattack: the reference implementation; torchattacks: its port, standard settings forced (flagged)")
    seed: int = option(0, min=0, help="seed of every sub-attack's random starts (AutoAttack reseeds torch before each)")
    n_restarts: int | None = option(
        None, min=1, help="custom only: restarts of APGD-CE, APGD-DLR and untargeted FAB (default: AutoAttack's constructor value, 5)")
    iterations: int | None = option(
        None, min=1, help="custom only: iterations of APGD-CE, APGD-DLR, APGD-T, FAB and FAB-T (default 100)")
    batch_size: int = option(250, min=1, help="AutoAttack's internal batch size (its default, 250); the random starts depend on it")
    verbose: bool = option(False, help="log AutoAttack's progress (logger \"auto-attack\", to stderr)")

    def __post_init__(self):
        if self.version == "custom":
            if not self.attacks_to_run:
                raise ValueError('version "custom" needs attacks_to_run, e.g. ["apgd-ce", "square"]')
            if len(set(self.attacks_to_run)) != len(self.attacks_to_run):
                raise ValueError(f"attacks_to_run lists an attack twice: {self.attacks_to_run}")
            if self.backend == "torchattacks":
                raise ValueError('version "custom" runs only on backend "pyautoattack" (torchattacks has no custom version)')
        else:
            for key in ("attacks_to_run", "n_restarts", "iterations"):
                if getattr(self, key):
                    raise ValueError(f'{key} applies to version "custom" only; version "{self.version}" fixes its attacks and settings')


def make_autoattack(config: AutoAttackConfig):
    """AutoAttack through pyautoattack (default) or torchattacks with the standard settings forced."""
    from rtk_plugins._lib.autoattack_backend import AutoAttack

    return AutoAttack(config)


@rtk.hookimpl
def register_attacks(register):
    register("autoattack", make_autoattack, config=AutoAttackConfig,
             summary="AutoAttack (Croce & Hein): reference pyautoattack by default, its checks as flags")
