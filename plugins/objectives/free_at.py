"""Free adversarial training (Shafahi et al. 2019, "Adversarial Training for Free!", arXiv:1904.12843)."""
from __future__ import annotations

import torch
from torch import nn

from rtk.errors import RtkError
from rtk.stages.training import Objective


class FreeAdversarialTraining(Objective):
    """Each loader batch is replayed ``replays`` times; every replay is one forward/backward at
    x + delta that yields both the weight gradient (the optimizer step) and the gradient of
    delta, which then ascends by a sign step. delta persists across replays and minibatches
    (never reset), as ``global_noise_data`` does in the reference code (main_free.py)."""

    def __init__(self, config):
        self.config = config
        self.steps_per_batch = config.replays
        self.step = config.eps if config.step is None else config.step
        self.delta: torch.Tensor | None = None  # [max batch, C, H, W]
        self._leaf: torch.Tensor | None = None  # delta[:B] of the last forward, requiring grad

    def split(self, images, labels):
        return [(images, labels)] * self.config.replays

    def _delta_for(self, images: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            self.delta = torch.zeros_like(images)
        if self.delta.shape[1:] != images.shape[1:]:
            raise RtkError(f"free-at: image shape {tuple(images.shape[1:])} differs from the persistent "
                           f"perturbation's {tuple(self.delta.shape[1:])}; train on images of one size")
        self.delta = self.delta.to(device=images.device, dtype=images.dtype)
        if len(images) > len(self.delta):  # a larger batch than any before: extend with zeros
            extra = self.delta.new_zeros((len(images) - len(self.delta), *images.shape[1:]))
            self.delta = torch.cat([self.delta, extra])
        return self.delta[: len(images)]

    def loss(self, model, images, labels):
        self._leaf = self._delta_for(images).clone().requires_grad_(True)
        return nn.functional.cross_entropy(model((images + self._leaf).clamp(0, 1)), labels)

    @torch.no_grad()
    def after_backward(self) -> None:
        leaf, self._leaf = self._leaf, None
        if leaf is None or leaf.grad is None:
            return
        eps = self.config.eps
        updated = (leaf + self.step * leaf.grad.sign()).clamp(-eps, eps)
        self.delta[: len(updated)] = updated

    def state_dict(self) -> dict:
        return {} if self.delta is None else {"delta": self.delta.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "delta" in state:
            self.delta = state["delta"].clone()
