"""The attack contract: a threat model (norm, eps) and a map from clean to adversarial images.

Attacks act in pixel space on models that normalise inside (rtk.models) and run the model in
eval mode (BN running statistics, no dropout), restoring every submodule's previous mode after.
"""
from __future__ import annotations

import torch
from torch import nn

from rtk.models import model_mode


class Attack:
    """Base class of attacks. Subclasses set ``norm`` ("Linf", "L2", ...) and ``eps`` and implement ``perturb``.

    ``diagnostics()`` returns what the attack itself noticed while running (AutoAttack's own
    checks, for example) as flags: dicts with "name", "message" and "source"; evaluation reports
    them beside rtk's sanity flags.
    """

    norm: str = "Linf"
    eps: float = 0.0

    def diagnostics(self) -> list[dict]:
        return []

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with model_mode(model, train=False):
            adversarial = self.perturb(model, images, labels)
        return adversarial.detach()

    @property
    def threat_model(self) -> str:
        return f"{self.norm} eps={self.eps:g}"
