"""The transfer-strategy contract and helpers strategies share (freezing, cached features)."""
from __future__ import annotations

import math
import os
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

from rtk.stages.context import RunContext
from rtk.data import ImageSet, owned_batches
from rtk.services.state import FEATURE_CACHE


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

    Returned as a FeatureSet (features (N, D) float32 on the CPU, labels) that iterates like an
    ImageSet. When the features would take more than ``ctx.run.feature_cache_mb`` MiB they are
    written batch by batch into a memory-mapped file (in the run folder's ``feature-cache/`` on
    rank 0, else the system's temporary folder; deleted with the FeatureSet), so memory stays
    bounded by one batch whatever the dataset's size. Under torchrun batches go to ranks
    round-robin and each is broadcast from its rank, so every rank ends with the same features
    a single process computes.
    """
    from rtk.services import distributed

    was_training = model.training
    model.eval()
    world = ctx.world
    n = len(data)
    store, path = None, None
    owned = owned_batches(data, batch_size, distributed.owns_batch, num_workers=ctx.run.workers,
                          pin_memory=ctx.run.pin_memory)
    try:
        with ctx.progress(description, n) as advance:
            for batch, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                owner = batch % world.size
                chunk = None
                if owner == world.rank:
                    _, images, _ = next(owned)
                    with ctx.autocast("eval"):
                        chunk = model.features(ctx.to_device(images)).float().cpu()
                chunk = distributed.broadcast_tensor(chunk, owner)
                if store is None:
                    store, path = feature_store((n, *chunk.shape[1:]), ctx, description)
                store[start:stop] = chunk
                advance(stop - start)
    finally:
        model.train(was_training)
    if store is None:
        store = torch.zeros(0, 0)
    features = FeatureSet(store, data.labels.clone())
    if path is not None:
        features.path = path
        weakref.finalize(features, path.unlink, missing_ok=True)
    return features


def feature_store(shape: tuple[int, ...], ctx: RunContext, description: str) -> tuple[torch.Tensor, Path | None]:
    """A float32 tensor of ``shape``: in memory, or memory-mapped from a new file when larger
    than ``ctx.run.feature_cache_mb`` MiB (then also the file's path)."""
    limit = ctx.run.feature_cache_mb
    numel = math.prod(shape)
    if limit is None or numel * 4 <= limit * 2**20:
        return torch.empty(shape, dtype=torch.float32), None
    folder = Path(ctx.out_dir) / FEATURE_CACHE if ctx.out_dir is not None and ctx.world.is_main else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in description).strip("-") or "features"
    handle, name = tempfile.mkstemp(prefix=f"{slug}-", suffix=".f32", dir=folder)
    try:
        os.ftruncate(handle, numel * 4)
    finally:
        os.close(handle)
    return torch.from_file(name, shared=True, size=numel, dtype=torch.float32).view(shape), Path(name)


class FeatureSet(ImageSet):
    """Cached features (N, D) with labels; iterates like an ImageSet. ``path`` is the
    memory-mapped file holding the features when they spilled to disk, else None."""

    path: Path | None = None

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.images = features
        self.labels = labels.long()
