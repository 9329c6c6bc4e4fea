"""Heads trained on a frozen backbone, shared by linear-probe, mlp-head and lwf: on cached features
(the default), or on images with the backbone's BatchNorm statistics re-estimated on the target
(linear-probe's ``frozen_bn_stats = "batch"``)."""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from rtk.stages.strategy import FeatureSet, compute_features, set_trainable
from rtk.stages.training import CrossEntropy, fit
from rtk_plugins.transfer.batchnorm import bn_layers


def unaugmented(split):
    """The split as the evaluation transform reads it: a dataset that augments its training images as it
    reads them (the study datasets, rtk_plugins.study_datasets) offers that view as ``unaugmented``; any
    other split is returned as it is."""
    return getattr(split, "unaugmented", split)


def train_head_on_features(model, data, ctx, cfg, build_head: Callable[[], nn.Module], description: str, *,
                           epochs: int | None = None, features: str = "features (train)") -> FeatureSet:
    """Freeze ``model`` (eval mode, no gradients), cache the features of the target's un-augmented
    training set once (``cfg.feature_batch_size`` per batch), put on the head ``build_head()`` returns
    and train it alone on the cache with cross-entropy and ``cfg``'s optimizer and schedule, for
    ``epochs`` (default ``cfg.epochs``; 0 skips training). Returns the cached features."""
    model.eval()
    set_trainable(model, False)
    cached = compute_features(model, unaugmented(data.train), ctx, cfg.feature_batch_size, features)
    head = build_head()
    if epochs is None or epochs:
        stage = cfg if epochs is None else dataclasses.replace(cfg, epochs=epochs)
        fit(head, cached, CrossEntropy(), stage, ctx, description=description)
    return cached


def train_head_with_batch_statistics(model, data, ctx, cfg, build_head: Callable[[], nn.Module],
                                     description: str) -> None:
    """Train the head ``build_head()`` puts on ``model`` on the target's training images (augmented as
    ``cfg.augment`` says), every backbone weight frozen, with the backbone's BatchNorm layers in train
    mode: each step normalises with the batch's statistics and moves the running statistics towards the
    target's, as a model.train() over a frozen body does (the study's final-layer transfer). Every other
    layer of the backbone stays in eval mode (no dropout); no gradient flows into the backbone."""
    set_trainable(model, False)
    head = build_head()
    set_trainable(head, True)

    def set_mode(m):
        m.eval()
        for bn in bn_layers(m.body):
            bn.train()
        m.head.train()

    fit(model, data.train, CrossEntropy(), cfg, ctx, params=list(head.parameters()), description=description,
        set_mode=set_mode)
