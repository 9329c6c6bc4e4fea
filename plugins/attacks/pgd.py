"""PGD through torchattacks, with restarts and rtk's threat-model contract."""
from __future__ import annotations

from typing import Callable

import torch

from rtk.evaluation.attacks import Attack


def step_size(norm: str, eps: float, steps: int, alpha: float | None) -> float:
    if alpha is not None:
        return alpha
    if norm == "Linf":
        return eps / 4
    return 2.5 * eps / max(steps, 1)  # Madry's robustness library default for L2


def best_of_restarts(model, images: torch.Tensor, labels: torch.Tensor, restarts: int,
                     run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``run`` up to ``restarts`` times, each time only on the examples no earlier run fooled
    (an example counts as broken if any restart breaks it)."""
    best = images.clone()
    remaining = torch.ones(len(images), dtype=torch.bool, device=images.device)
    for restart in range(restarts):
        idx = remaining.nonzero().flatten()
        if len(idx) == 0:
            break
        adversarial = run(images[idx], labels[idx])
        best[idx] = adversarial
        if restart == restarts - 1:
            break  # which examples the last restart fooled changes nothing: skip that forward pass
        with torch.no_grad():
            fooled = model(adversarial).argmax(1) != labels[idx]
        remaining[idx[fooled]] = False
    return best


def torchattacks_pgd(model, norm: str, eps: float, alpha: float, steps: int, random_start: bool):
    import torchattacks

    cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
    attack = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    # rtk's Attack.__call__ owns the train/eval mode (restoring each submodule); torchattacks must not flip it.
    attack.set_model_training_mode(model_training=model.training)
    return attack


class PGDAttack(Attack):
    def __init__(self, config):
        self.config = config
        self.norm = config.norm
        self.eps = config.eps
        self.alpha = step_size(config.norm, config.eps, config.steps, config.alpha)

    def single_run(self, model):
        """One restart of the attack: a callable (images, labels) -> adversarial images."""
        cfg = self.config
        return torchattacks_pgd(model, cfg.norm, cfg.eps, self.alpha, cfg.steps, cfg.random_start)

    def perturb(self, model, images, labels):
        cfg = self.config
        if cfg.eps == 0 or cfg.steps == 0:
            return images.clone()
        return best_of_restarts(model, images, labels, cfg.restarts, self.single_run(model))
