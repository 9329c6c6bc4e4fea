"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy", arXiv:1901.08573), following trades_loss in yaodongyu/TRADES trades.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rtk.stages.training import Objective
from rtk_plugins.objectives.attack_modes import attack_modes


def kl_sum(adversarial_logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """sum over the batch of KL(clean_probs || softmax(adversarial_logits)) (nn.KLDivLoss(size_average=False))."""
    return F.kl_div(F.log_softmax(adversarial_logits, dim=1), clean_probs, reduction="sum")


class TRADES(Objective):
    def __init__(self, config):
        self.config = config

    def perturb(self, model, images: torch.Tensor) -> torch.Tensor:
        """x' maximising KL(f(x) || f(x')) in the eps ball, from x + 0.001 N(0, 1); clipped to [0, 1]."""
        cfg = self.config
        images = images.detach()
        with attack_modes(model, cfg.attack_mode):
            with torch.no_grad():
                target = F.softmax(model(images), dim=1)
            noise = 0.001 * torch.randn_like(images)
            if cfg.norm == "Linf":
                adversarial = images + noise
                for _ in range(cfg.steps):
                    adversarial.requires_grad_(True)
                    with torch.enable_grad():
                        grad, = torch.autograd.grad(kl_sum(model(adversarial), target), [adversarial])
                    adversarial = adversarial.detach() + cfg.alpha * grad.sign()
                    adversarial = torch.min(torch.max(adversarial, images - cfg.eps), images + cfg.eps).clamp(0, 1)
            else:
                adversarial = images + self._l2_delta(model, images, target, noise)
        return adversarial.clamp(0, 1).detach()

    def _l2_delta(self, model, images, target, delta):
        """trades.py's l_2 branch: normalised-gradient ascent on delta, then clip to [0, 1] and renorm to eps."""
        cfg = self.config
        for _ in range(cfg.steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                grad, = torch.autograd.grad(kl_sum(model(images + delta), target), [delta])
            norms = grad.flatten(1).norm(dim=1)
            grad = grad / norms.clamp_min(1e-12).view(-1, 1, 1, 1)
            # a zero gradient gets a random direction, as the reference does, instead of NaN
            grad = torch.where((norms == 0).view(-1, 1, 1, 1), torch.randn_like(grad), grad)
            delta = (images + delta.detach() + cfg.alpha * grad).clamp(0, 1) - images
            delta = delta.renorm(p=2, dim=0, maxnorm=cfg.eps)
        return delta.detach()

    def loss(self, model, images, labels):
        adversarial = self.perturb(model, images)
        logits = model(images)
        # The KL's clean softmax is not detached: the outer loss also moves f(x) towards f(x').
        robust = kl_sum(model(adversarial), F.softmax(logits, dim=1)) / len(images)
        return F.cross_entropy(logits, labels) + self.config.beta * robust
