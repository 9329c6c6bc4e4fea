"""Training: the objective contract, the shared optimisation options, and the training loop."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from rtk.augment import augment
from rtk.options import TrainConfig  # noqa: F401  (re-exported: strategies subclass it)
from rtk.context import RunContext
from rtk.data import iterate
from rtk.errors import RtkError


class Objective:
    """A training loss. ``loss`` is called with the model in train mode and returns a scalar.

    An objective may define ``start_epoch(epoch, epochs)`` to follow the schedule (eps ramps).
    """

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise RtkError("nothing to train: every parameter is frozen")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if cfg.schedule == "multistep":
        marks = [int(m * steps_per_epoch) for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def fit(model: nn.Module, data, objective: Objective, cfg: TrainConfig, ctx: RunContext, *,
        params: Iterable[nn.Parameter] | None = None, description: str = "train", stream: int = 0,
        set_mode=None) -> list[float]:
    """Train ``params`` (default: all trainable) of ``model`` on ``data`` with ``objective``.

    ``set_mode(model)`` is called at the start of every epoch (default ``model.train()``) so
    that strategies can keep parts of the model in eval mode (frozen BN statistics).
    Returns the mean loss of each epoch. A NaN or infinite loss stops training with the step named.
    """
    optimizer = make_optimizer(model.parameters() if params is None else params, cfg)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    generator = ctx.generator(offset=1000 + stream)
    history = []
    step = 0
    with ctx.progress(description, cfg.epochs * steps_per_epoch) as advance:
        for epoch in range(cfg.epochs):
            (set_mode or (lambda m: m.train()))(model)
            if hasattr(objective, "start_epoch"):
                objective.start_epoch(epoch, cfg.epochs)
            total, count = 0.0, 0
            for images, labels in iterate(data, cfg.batch_size, shuffle=True, generator=generator):
                images = augment(images, cfg.augment, generator).to(ctx.device, non_blocking=True)
                labels = labels.to(ctx.device, non_blocking=True)
                loss = objective.loss(model, images, labels)
                if not torch.isfinite(loss):
                    raise RtkError(f"{description}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower the learning rate or check the data")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                total += loss.item() * len(labels)
                count += len(labels)
                advance()
            history.append(total / max(count, 1))
    model.eval()
    return history


class CrossEntropy(Objective):
    """Natural training: mean cross-entropy on clean images."""

    def loss(self, model, images, labels):
        return nn.functional.cross_entropy(model(images), labels)
