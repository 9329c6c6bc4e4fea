"""The uniform-noise attack (see UniformNoiseConfig)."""
from __future__ import annotations

import torch

from rtk.evaluation.attacks import Attack


class UniformNoise(Attack):
    norm = "Linf"

    def __init__(self, config):
        self.config = config
        self.eps = config.eps

    @torch.no_grad()
    def perturb(self, model, images, labels):
        eps = self.config.eps
        best = images.clone()
        if eps == 0:
            return best
        # Only examples no draw has fooled yet get another draw, so the result is a fooling
        # draw where one exists (the best of k) and the last draw otherwise.
        remaining = torch.ones(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.config.samples):
            idx = remaining.nonzero().flatten()
            if len(idx) == 0:
                break
            clean = images[idx]
            # The global generator is what rtk.evaluation.robust_accuracy seeds from the run seed, so runs repeat.
            noise = (torch.rand_like(clean) * 2 - 1) * eps
            candidate = (clean + noise).clamp(0.0, 1.0)
            fooled = model(candidate).argmax(1) != labels[idx]
            best[idx] = candidate
            remaining[idx[fooled]] = False
        return best
