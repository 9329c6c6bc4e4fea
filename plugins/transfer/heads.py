"""Heads trained on cached frozen features, shared by linear-probe, mlp-head and lwf."""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from rtk.stages.strategy import FeatureSet, compute_features, set_trainable
from rtk.stages.training import CrossEntropy, fit


def train_head_on_features(model, data, ctx, cfg, build_head: Callable[[], nn.Module], description: str, *,
                           epochs: int | None = None, features: str = "features (train)") -> FeatureSet:
    """Freeze ``model`` (eval mode, no gradients), cache the features of the target's training set
    once (``cfg.feature_batch_size`` per batch), put on the head ``build_head()`` returns and train it
    alone on the cache with cross-entropy and ``cfg``'s optimizer and schedule, for ``epochs``
    (default ``cfg.epochs``; 0 skips training). Returns the cached features."""
    model.eval()
    set_trainable(model, False)
    cached = compute_features(model, data.train, ctx, cfg.feature_batch_size, features)
    head = build_head()
    if epochs is None or epochs:
        stage = cfg if epochs is None else dataclasses.replace(cfg, epochs=epochs)
        fit(head, cached, CrossEntropy(), stage, ctx, description=description)
    return cached
