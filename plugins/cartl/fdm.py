"""CARTL feature distance minimisation (Chen et al., arXiv:2106.06667); options and defaults:
rtk_plugins.cartl.CARTLFDMConfig."""
from __future__ import annotations

import math

from torch import nn

from rtk.models import model_mode
from rtk.errors import RtkError
from rtk.stages.training import Objective
from rtk_plugins.attacks.pgd import torchattacks_pgd


class FeatureDistanceMinimization(Objective):
    def __init__(self, config):
        self.config = config

    def loss(self, model, images, labels):
        cfg = self.config
        blocks = model.blocks
        if cfg.k > len(blocks):
            raise RtkError(f"cartl-fdm: k = {cfg.k} but the model has {len(blocks)} blocks (the head counts as one);"
                           f" choose k between 1 and {len(blocks)}")
        with model_mode(model, train=False):
            attack = torchattacks_pgd(model, "Linf", cfg.eps, cfg.alpha, cfg.steps, cfg.random_start)
            adversarial = attack(images, labels).detach()
        captured = []
        hook = blocks[-cfg.k].register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            logits = model(adversarial)
            model(images)  # the whole clean pass, as the code: BN running statistics see clean batches too
        finally:
            hook.remove()
        r_adv, r_clean = (r.flatten(1) for r in captured)
        distance = (r_adv - r_clean).norm(dim=1) / math.sqrt(r_adv.shape[1])
        distance = distance.sum() if cfg.reduction == "sum" else distance.mean()
        return nn.functional.cross_entropy(logits, labels) + cfg.lam * distance
