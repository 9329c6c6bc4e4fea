"""LwF-style feature distillation (Shafahi et al., "Adversarially robust transfer learning",
arXiv:1905.08232, Sec. 6): see rtk_plugins.lwf.LwFConfig.

z0 is computed once (rtk_plugins.transfer.heads.train_head_on_features). Phase 1 trains the head
alone on the cached z0: with the body frozen and BN in eval mode, z(x) = z0 exactly, so the
distance term is zero and no image forward pass is needed. Phase 2 trains all weights on (image, index) batches; the
objective looks the labels and z0 up by index, so the source never runs again.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from rtk.data import ImageSet
from rtk.stages.training import Objective, fit
from rtk.stages.strategy import FeatureSet, set_trainable
from rtk_plugins.transfer.base import Strategy, refuse_objective
from rtk_plugins.transfer.batchnorm import freeze_bn_affine
from rtk_plugins.transfer.heads import train_head_on_features, unaugmented


class Indexed(torch.utils.data.Dataset):
    """``data`` whose batches carry each example's index in place of its label: batched through
    ``take`` (in memory) or item by item through a DataLoader (file-backed, ``run.workers > 0``)."""

    def __init__(self, data):
        self.data = data
        self.in_memory = isinstance(data, ImageSet)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i][0], i

    def take(self, indices: torch.Tensor):
        images, _ = self.data.take(indices)
        return images, indices


def feature_distance(z: torch.Tensor, z0: torch.Tensor, distance: str) -> torch.Tensor:
    """Batch mean of the per-example L1 ("l1-mean") or L2 ("l2") norm of z - z0."""
    return torch.linalg.vector_norm(z - z0, ord=1 if distance == "l1-mean" else 2, dim=1).mean()


class FeatureDistillation(Objective):
    """CE(f(x), y) + lambda_d * d(z(x), z0) on batches of (images, example indices)."""

    def __init__(self, labels: torch.Tensor, z0: torch.Tensor, lambda_d: float, distance: str):
        self.labels, self.z0 = labels, z0
        self.lambda_d, self.distance = lambda_d, distance

    def setup(self, model, device):
        self.labels, self.z0 = self.labels.to(device), self.z0.to(device)

    def loss(self, model, images, index):
        z = model.features(images)
        ce = F.cross_entropy(model.head(z), self.labels[index])
        if not self.lambda_d:
            return ce
        return ce + self.lambda_d * feature_distance(z, self.z0[index], self.distance)


def eval_mode(model) -> None:
    model.eval()


def train_all_weights(model, data, z0: FeatureSet, cfg, ctx, description: str = "lwf: all weights"):
    """Phase 2: every weight (BN affine per ``cfg.bn_affine_trainable``) with a fresh optimizer,
    BN in eval mode. ``z0`` holds the cached source features and the labels of ``data``."""
    set_trainable(model, True)
    if not cfg.bn_affine_trainable:
        freeze_bn_affine(model)
    objective = FeatureDistillation(z0.labels, z0.images, cfg.lambda_d, cfg.distance)
    return fit(model, Indexed(data), objective, cfg, ctx, description=description, stream=1, set_mode=eval_mode)


class LwF(Strategy):
    def transfer(self, model, data, ctx, objective=None):
        refuse_objective(objective, "lwf trains on natural target data with its own feature-distance loss;"
                                    " drop [transfer.objective] (or use finetune for adversarial training)")
        cfg = self.config
        warm = int(cfg.warm_start_fraction * cfg.epochs + 0.5)  # whole epochs, halves rounded up
        z0 = train_head_on_features(model, data, ctx, cfg, lambda: model.reset_head(data.num_classes, cfg.head_init),
                                    "lwf: head only", epochs=warm, features="source features z0 (train)")
        if cfg.epochs - warm:
            # z0 came from the un-augmented images, so z(x) is compared on the same images (a study dataset
            # augments its training split as it reads it unless asked for this view).
            train_all_weights(model, unaugmented(data.train), z0, dataclasses.replace(cfg, epochs=cfg.epochs - warm),
                              ctx)
        model.eval()
        return model
