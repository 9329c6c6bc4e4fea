"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv:1706.06083); options and defaults: rtk_plugins.objectives.PGDATConfig."""
from __future__ import annotations

from torch import nn

from rtk.stages.training import Objective
from rtk_plugins.attacks.pgd import step_size, torchattacks_pgd
from rtk_plugins.objectives.attack_modes import attack_modes


class PGDAdversarialTraining(Objective):
    def __init__(self, config):
        self.config = config
        self.scale = 1.0

    def start_epoch(self, epoch: int, epochs: int) -> None:
        ramp = self.config.eps_ramp
        self.scale = 1.0 if ramp == 0 else min(1.0, (epoch + 1) / max(1.0, ramp * epochs))

    def loss(self, model, images, labels):
        cfg = self.config
        eps = cfg.eps * self.scale
        alpha = step_size(cfg.norm, cfg.eps, cfg.steps, cfg.alpha) * self.scale
        with attack_modes(model, cfg.attack_mode) as fixed:
            attack = torchattacks_pgd(fixed, cfg.norm, eps, alpha, cfg.steps, cfg.random_start)
            attack.set_model_training_mode(model_training=False)  # its eval path: fixed.eval(), a no-op
            adversarial = attack(images, labels).detach()
        loss = nn.functional.cross_entropy(model(adversarial), labels)
        if cfg.mix_clean > 0:
            loss = (1 - cfg.mix_clean) * loss + cfg.mix_clean * nn.functional.cross_entropy(model(images), labels)
        return loss
