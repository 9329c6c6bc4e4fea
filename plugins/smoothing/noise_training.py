"""Training base classifiers for randomized smoothing.

- Gaussian augmentation (Cohen et al., "Certified Adversarial Robustness via Randomized
  Smoothing", arXiv:1902.02918, code/train.py);
- consistency regularization (Jeong & Shin, "Consistency Regularization for Certified
  Robustness of Smoothed Classifiers", arXiv:2006.04062, code/consistency.py and
  code/train_consistency.py).

Noise comes from torch's global generator, as in both codes; rtk's training checkpoints save
its state, so a resumed training draws the same noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rtk.stages.training import Objective


class GaussianAugmentation(Objective):
    """Cross-entropy on x + sigma * N(0, I) (pixel space, no clipping)."""

    def __init__(self, config):
        self.sigma = config.sigma

    def loss(self, model, images, labels):
        return F.cross_entropy(model(images + torch.randn_like(images) * self.sigma), labels)


def consistency_term(logits: list[torch.Tensor] | tuple[torch.Tensor, ...], lam: float, eta: float) -> torch.Tensor:
    """lam * mean_i KL(p_bar || p_i) + eta * H(p_bar), averaged over the clean examples.

    ``logits`` holds one (b, classes) batch per noise copy. p_bar is not detached (gradients flow
    through the target too, as in the reference code), and H clamps p_bar at 1e-20 before the
    log, as the code does. The KL term takes log p_bar as the logsumexp of the log-softmaxes
    minus log m: the value of the code's F.kl_div(log_softmax(z_i), p_bar), without its NaN
    gradient where a probability underflows to exactly 0 (logit gaps above ~104 in float32).
    """
    m = len(logits)
    log_probs = [F.log_softmax(logit, dim=1) for logit in logits]
    log_p_bar = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(m)
    p_bar = log_p_bar.exp()
    kl = sum((p_bar * (log_p_bar - log_p)).sum(1) for log_p in log_probs) / m
    entropy = -(p_bar * torch.log(p_bar.clamp(min=1e-20))).sum(1)
    return (lam * kl + eta * entropy).mean()


class ConsistencyRegularization(Objective):
    """CE over m noisy copies of each example plus the consistency term; m optimizer steps per
    loader batch, one per chunk of B // m examples (the remainder of B mod m is dropped, as in
    train_consistency.py's _chunk_minibatch)."""

    def __init__(self, config):
        self.sigma, self.m, self.lam, self.eta = config.sigma, config.m, config.lam, config.eta
        self.steps_per_batch = config.m

    def split(self, images, labels):
        size = len(images) // self.m
        if size == 0:  # a last loader batch smaller than m: one step on it rather than none
            return [(images, labels)]
        return [(images[i * size:(i + 1) * size], labels[i * size:(i + 1) * size]) for i in range(self.m)]

    def loss(self, model, images, labels):
        noisy = torch.cat([images + torch.randn_like(images) * self.sigma for _ in range(self.m)])
        logits = model(noisy)
        cross_entropy = F.cross_entropy(logits, labels.repeat(self.m))
        return cross_entropy + consistency_term(logits.chunk(self.m), self.lam, self.eta)
