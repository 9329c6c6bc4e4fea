"""The transfer-strategy contract and helpers strategies share (freezing, cached features)."""
from __future__ import annotations

import torch
from torch import nn

from rtk.context import RunContext
from rtk.data import ImageSet, iterate


class TransferStrategy:
    """Adapts a source model to the target task.

    ``transfer(model, data, ctx, objective)`` receives the source model (an rtk.models.RtkModel),
    the target rtk.data.DataSplits, the run context and the objective of ``[transfer.objective]``
    (None when the recipe names none), and returns the target model.
    """

    def transfer(self, model, data, ctx: RunContext, objective=None):
        raise NotImplementedError

    def rebuild(self, model, num_classes: int):
        """Give a freshly built source model the architecture ``transfer`` leaves behind (a head
        for ``num_classes``, MLP heads, wrapped blocks, adapters), untrained: a resumed run then
        loads the saved target weights into it. Strategies that change more than the head's
        size override this."""
        if model.num_classes != num_classes:
            model.reset_head(num_classes)
        return model


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


@torch.inference_mode()
def compute_features(model, data, ctx: RunContext, batch_size: int = 512, description: str = "features") -> ImageSet:
    """Penultimate features of every example, computed once in eval mode (for frozen backbones).

    Returned as an ImageSet-like pair of tensors (features, labels) on the CPU.
    """
    was_training = model.training
    model.eval()
    chunks = []
    with ctx.progress(description, len(data)) as advance:
        for images, _ in iterate(data, batch_size):
            chunks.append(model.features(images.to(ctx.device)).float().cpu())
            advance(len(images))
    model.train(was_training)
    return FeatureSet(torch.cat(chunks), data.labels.clone())


class FeatureSet(ImageSet):
    """Cached features (N, D) with labels; iterates like an ImageSet."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.images = features
        self.labels = labels.long()
