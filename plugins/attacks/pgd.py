"""PGD through torchattacks, with restarts and rtk's threat-model contract; and PGD that keeps its
best iterate (``keep``), the ``use_best`` of the robustness library's attacker that RoLI's code
copies (DongXzz/RoLI src/adv_func.py, ``adv_generator`` and ``replace_best``)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

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


def pgd_best_iterate(model, images: torch.Tensor, labels: torch.Tensor, norm: str, eps: float, alpha: float,
                     steps: int, start_random: bool, per_example: bool) -> torch.Tensor:
    """PGD on cross-entropy that returns the iterate with the highest loss, not the last one.

    As RoLI's ``adv_generator(use_best=True)`` (DongXzz/RoLI src/adv_func.py:129-160): the
    candidates are the start (random or clean) and every iterate after it, ``steps + 1`` in
    all (one more forward pass than plain PGD); a later iterate replaces the kept one only if
    its loss is strictly higher. ``per_example = False`` compares the batch-mean loss, so the
    whole batch's iterate is kept or replaced at once: RoLI's criterion returns the batch mean
    (src/solver/losses.py:61-67), so its ``replace_best`` compares one number per batch.
    ``per_example = True`` compares each example's own loss (the robustness library's intent).
    Steps, projection and random start are those of ``torchattacks.PGD`` / ``PGDL2``.
    """
    from rtk_plugins.attacks.gradient import ascent_direction, project, random_start  # gradient imports this module

    clean = images.detach()
    current = random_start(clean, norm, eps) if start_random else clean.clone()
    best, best_loss = None, None
    for step in range(steps + 1):
        last = step == steps
        with torch.enable_grad():
            current.requires_grad_(not last)
            losses = F.cross_entropy(model(current), labels, reduction="none")
            grad = None if last else torch.autograd.grad(losses.mean(), current)[0]
        current = current.detach()
        losses = losses.detach() if per_example else losses.detach().mean()
        if best is None:
            best, best_loss = current.clone(), losses
        elif per_example:
            better = losses > best_loss
            best[better] = current[better]
            best_loss = torch.where(better, losses, best_loss)
        elif losses > best_loss:
            best, best_loss = current.clone(), losses
        if not last:
            current = project(clean, current + alpha * ascent_direction(grad, norm), norm, eps)
    return best


def pgd_run(model, norm: str, eps: float, alpha: float, steps: int, random_start: bool, keep: str = "last"):
    """One PGD restart as a callable (images, labels) -> adversarial images; ``keep`` as PGDConfig's."""
    if keep == "last":
        return torchattacks_pgd(model, norm, eps, alpha, steps, random_start)
    per_example = keep == "best-example"
    return lambda x, y: pgd_best_iterate(model, x, y, norm, eps, alpha, steps, random_start, per_example)


class PGDAttack(Attack):
    def __init__(self, config):
        self.config = config
        self.norm = config.norm
        self.eps = config.eps
        self.alpha = step_size(config.norm, config.eps, config.steps, config.alpha)

    def single_run(self, model):
        """One restart of the attack: a callable (images, labels) -> adversarial images."""
        cfg = self.config
        return pgd_run(model, cfg.norm, cfg.eps, self.alpha, cfg.steps, cfg.random_start, cfg.keep)

    def perturb(self, model, images, labels):
        cfg = self.config
        if cfg.eps == 0 or cfg.steps == 0:
            return images.clone()
        return best_of_restarts(model, images, labels, cfg.restarts, self.single_run(model))
