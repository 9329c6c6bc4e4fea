"""White-box gradient attacks beside PGD: FGSM (torchattacks) and PGD on the Carlini-Wagner margin
loss (CW-20 of Shafahi et al.), plus the ball projection the reference-implementation attacks reuse."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rtk.evaluation.attacks import Attack
from rtk_plugins.attacks.pgd import PGDAttack


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


def project(images: torch.Tensor, adversarial: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The nearest point of the ``norm`` ball of radius ``eps`` around ``images``, clamped to [0, 1].

    Clamping after projecting never leaves the ball: ``images`` lie in [0, 1], so the clamp moves
    every coordinate towards them.
    """
    delta = adversarial - images
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        size = delta.flatten(1).norm(dim=1)
        delta = delta * _per_example((eps / size.clamp_min(1e-12)).clamp(max=1.0), delta)
    return (images + delta).clamp(0.0, 1.0)


def random_start(images: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """A uniform point of the Linf ball, or (as torchattacks.PGDL2) a random direction at a uniform radius for L2."""
    if norm == "Linf":
        delta = torch.empty_like(images).uniform_(-eps, eps)
    else:
        delta = torch.randn_like(images)
        radius = torch.rand(len(images), device=images.device) * eps
        delta = delta * _per_example(radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12), delta)
    return (images + delta).clamp(0.0, 1.0)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit ``norm``: the sign for Linf, the normalised gradient for L2."""
    if norm == "Linf":
        return grad.sign()
    return grad / _per_example(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def cw_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per-example -ReLU(z_y - max_{j != y} z_j + kappa), the loss the attack ascends.

    The class count comes from the logits (Shafahi's pgd_attack.py hard-coded 10 in the one-hot).
    """
    true = logits.gather(1, labels[:, None]).squeeze(1)
    is_true = F.one_hot(labels, logits.shape[1]).bool()
    other = logits.masked_fill(is_true, float("-inf")).amax(1)
    return -F.relu(true - other + kappa)


def cw_pgd(model, images, labels, norm: str, eps: float, alpha: float, steps: int, kappa: float,
           start_random: bool) -> torch.Tensor:
    clean = images.detach()
    adversarial = random_start(clean, norm, eps) if start_random else clean.clone()
    for _ in range(steps):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            # Summed, as in Shafahi's code: each example's gradient is its own.
            loss = cw_loss(model(adversarial), labels, kappa).sum()
            (grad,) = torch.autograd.grad(loss, adversarial)
        adversarial = project(clean, adversarial.detach() + alpha * ascent_direction(grad, norm), norm, eps)
    return adversarial.detach()


class CWPGDAttack(PGDAttack):
    """PGD's restarts and threat model with the CW margin loss in place of cross-entropy."""

    def single_run(self, model):
        cfg = self.config
        return lambda x, y: cw_pgd(model, x, y, cfg.norm, cfg.eps, self.alpha, cfg.steps, cfg.kappa, cfg.random_start)


class FGSMAttack(Attack):
    norm = "Linf"

    def __init__(self, config):
        self.eps = config.eps

    def perturb(self, model, images, labels):
        import torchattacks

        if self.eps == 0:
            return images.clone()
        attack = torchattacks.FGSM(model, eps=self.eps)
        # rtk's Attack.__call__ owns the train/eval mode (restoring each submodule); torchattacks must not flip it.
        attack.set_model_training_mode(model_training=model.training)
        return attack(images, labels)
