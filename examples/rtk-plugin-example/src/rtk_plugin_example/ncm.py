"""The nearest-class-mean transfer strategy (see NearestClassMeanConfig)."""
from __future__ import annotations

import torch
from torch import nn

from rtk.errors import RtkError
from rtk.stages.strategy import TransferStrategy, compute_features, set_trainable

# A class without training examples must never win, yet stay finite so that the cross-entropy
# gradients attacks take through the head do not turn into NaN.
ABSENT_CLASS_BIAS = -1e9


def class_mean_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the linear layer whose argmax is the nearest class mean."""
    features = features.double()
    if normalize:
        features = nn.functional.normalize(features, dim=1)
    dim = features.shape[1]
    sums = torch.zeros(num_classes, dim, dtype=features.dtype).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    present = counts > 0
    means = sums / counts.clamp(min=1).unsqueeze(1)
    if normalize:
        # argmax_c cos(z, mu_c) = argmax_c <z, mu_c / |mu_c|>: |z| scales every logit alike.
        weight = nn.functional.normalize(means, dim=1)
        bias = torch.zeros(num_classes, dtype=features.dtype)
    else:
        # argmin_c |z - mu_c|^2 = argmax_c <z, mu_c> - |mu_c|^2 / 2 (the |z|^2 term is shared).
        # Dividing by the mean |mu_c|^2 keeps the argmax but brings logits from hundreds to
        # order one: at the raw scale the softmax saturates, cross-entropy gradients vanish in
        # float32 and PGD overstates robustness (gradient masking by the head itself).
        squared = (means * means).sum(1)
        scale = squared[present].mean().clamp(min=1e-12)
        weight = means / scale
        bias = -0.5 * squared / scale
    bias = torch.where(present, bias, torch.full_like(bias, ABSENT_CLASS_BIAS))
    return weight.float(), bias.float()


class NearestClassMean(TransferStrategy):
    def __init__(self, config):
        self.config = config

    def transfer(self, model, data, ctx, objective=None):
        if objective is not None:
            raise RtkError("[transfer.objective]: nearest-class-mean sets its head in closed form and trains nothing;"
                           " drop [transfer.objective] or use finetune")
        if len(data.train) == 0:
            raise RtkError("nearest-class-mean: the target training set is empty")
        model.eval()
        set_trainable(model, False)
        cached = compute_features(model, data.train, ctx, self.config.feature_batch_size, "features (train)")
        weight, bias = class_mean_head(cached.images, cached.labels, data.num_classes, self.config.normalize)
        head = model.reset_head(data.num_classes)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        head.requires_grad_(False)
        model.eval()
        return model
