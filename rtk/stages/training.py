"""Training: the objective contract, the shared optimisation options, and the training loop."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from rtk.augment import augment
from rtk.services.checkpoints import load_train_state, rng_states, save_train_state, set_rng_states
from rtk.config.schema import TrainConfig  # noqa: F401  (re-exported: strategies subclass it)
from rtk.stages.context import RunContext
from rtk.data import iterate
from rtk.services import distributed
from rtk.errors import RtkError


class Objective:
    """A training loss. ``loss`` is called with the model in train mode and returns a scalar.

    Optional hooks, all called by ``fit``:

    - ``start_epoch(epoch, epochs)``: follow the schedule (eps ramps).
    - ``setup(model, device)``: once, before the optimizer is built (create owned modules,
      e.g. a projection head, on ``device``); their parameters come from ``parameters()``
      and are trained with the model's.
    - ``steps_per_batch`` and ``split(images, labels)``: one loader batch becomes
      ``steps_per_batch`` optimizer steps, one per piece ``split`` returns (Free-AT replays a
      batch m times; consistency training steps on m chunks). The schedule counts these steps.
    - ``after_backward()``: after each backward, before the optimizer step (Free-AT updates
      its persistent perturbation from the same gradient).
    - ``state_dict()`` / ``load_state_dict(state)``: tensors saved in training checkpoints, so
      a resumed run continues with the same persistent state.
    """

    steps_per_batch: int = 1

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, model: nn.Module, device: torch.device) -> None:
        pass

    def parameters(self) -> list[nn.Parameter]:
        return []

    def split(self, images: torch.Tensor, labels: torch.Tensor):
        return [(images, labels)]

    def after_backward(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise RtkError("nothing to train: every parameter is frozen")
    if cfg.weight_decay and not getattr(cfg, "decay_bias_and_norm", True):
        # Biases and norm scales/shifts are the parameters with fewer than 2 dimensions.
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        params = [group for group in params if group["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    betas = tuple(getattr(cfg, "adam_betas", (0.9, 0.999)))
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise RtkError(f"adam_betas = {list(betas)}: give two numbers in [0, 1), e.g. [0.9, 0.999]")
    adam = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, eps=getattr(cfg, "adam_eps", 1e-8),
                betas=betas)
    return (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(params, **adam)


def make_schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate multiplier per optimizer step: ``warmup_epochs`` of linear warm-up
    ((step+1)/W, so the first step already trains), then the schedule (cosine over the
    remaining steps; multistep at absolute epochs; constant)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = round(getattr(cfg, "warmup_epochs", 0.0) * steps_per_epoch)
    if warm <= 0:
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        if cfg.schedule == "multistep":
            marks = [int(m * steps_per_epoch) for m in cfg.milestones]
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=cfg.gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    marks = [int(m * steps_per_epoch) for m in cfg.milestones]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m for m in marks)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(model: nn.Module, data, objective: Objective, cfg: TrainConfig, ctx: RunContext, *,
        params: Iterable[nn.Parameter] | None = None, description: str = "train", stream: int = 0,
        set_mode=None, checkpoint: Path | None | str = "auto", resume: bool | None = None) -> list[float]:
    """Train ``params`` (default: all trainable) of ``model`` on ``data`` with ``objective``.

    ``set_mode(model)`` is called at the start of every epoch (default ``model.train()``) so
    that strategies can keep parts of the model in eval mode (frozen BN statistics).
    Returns the mean loss of each epoch. A NaN or infinite loss stops training with the step named.

    ``checkpoint`` (default: ``ctx.train_checkpoint()``, None: none) is rewritten at the end of
    every epoch and every ``cfg.checkpoint_every`` steps; with ``resume`` (default ``ctx.resume``)
    training continues from it and ends with the weights an uninterrupted run would have.

    Fast paths from ``ctx``: bf16 autocast around the loss (``ctx.amp``), channels_last
    weights and batches, DataLoader workers and pinned memory for file-backed data.

    Under torchrun (rtk.services.distributed), every rank draws the same global batch and trains on its
    slice; gradients are all-reduced after each backward (weighted by slice size, so they are
    the global batch's mean-loss gradient), BN running statistics are averaged at the end of
    each epoch, and only rank 0 writes checkpoints. For a deterministic objective this is the
    single-process training up to float summation order. ``split`` then acts on each rank's
    slice; torch's global generator is seeded per rank during training (random starts of
    adversarial objectives differ per rank, as their examples do) and rank 0's state is restored
    on every rank afterwards, so later model construction stays identical across ranks.
    """
    world = ctx.world
    hook = (lambda name, default=None: getattr(objective, name, default))  # plain objects need only loss()
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    if hook("setup"):
        objective.setup(model, ctx.device)
    params = list(model.parameters() if params is None else params) + list(hook("parameters", list)())
    if world.distributed:  # identical starting weights on every rank, as DDP guarantees at construction
        distributed.broadcast_module(model)
        for p in hook("parameters", list)():
            p.data.copy_(distributed.broadcast(p.detach(), 0))
    optimizer = make_optimizer(params, cfg)
    per_batch = max(1, int(hook("steps_per_batch", 1)))
    batches_per_epoch = math.ceil(len(data) / cfg.batch_size)
    steps_per_epoch = batches_per_epoch * per_batch
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    generator = ctx.generator(offset=1000 + stream)
    path = ctx.train_checkpoint() if checkpoint == "auto" else checkpoint
    resume = ctx.resume if resume is None else resume
    every = getattr(cfg, "checkpoint_every", 0) or 0
    fingerprint = (f"{description}|stream {stream}|{len(data)} examples|batch {cfg.batch_size}|{cfg.epochs} epochs|"
                   + ",".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()))
    history, step, first_epoch, done, total, count = [], 0, 0, 0, 0.0, 0
    epoch_start = generator.get_state()
    saved = None  # the path of the last checkpoint this training can go back to
    if path is not None and Path(path).is_file():
        if resume:  # every rank reads the checkpoint rank 0 wrote
            state = load_train_state(Path(path), fingerprint)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if hook("load_state_dict") and state.get("objective"):
                objective.load_state_dict(state["objective"])
            schedule.load_state_dict(state["schedule"])
            set_rng_states(state["rng"])
            history, step, first_epoch, done = list(state["history"]), state["step"], state["epoch"], state["done"]
            total, count, epoch_start, saved = state["total"], state["count"], state["generator"], path
        elif world.is_main:
            Path(path).unlink(missing_ok=True)  # a stale file of an earlier run must never be resumed from

    def save(epoch: int, done: int, start_state: torch.Tensor) -> None:
        nonlocal saved
        if path is None or not world.is_main:
            return
        save_train_state(Path(path), {
            "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "rng": rng_states(),
            "objective": hook("state_dict", dict)(), "generator": start_state,
            "epoch": epoch, "done": done, "step": step, "history": history, "total": total, "count": count})
        saved = path

    if world.distributed and world.rank > 0:
        torch.manual_seed(ctx.seed * 1_000_003 + 7919 * world.rank + step)
    # Without augmentation a rank loads only its slice; augmentations draw from the generator for
    # the whole global batch, so then every rank augments the global batch and keeps its slice.
    part = distributed.split_batch if world.distributed and cfg.augment == "none" else None
    with ctx.progress(description, cfg.epochs * steps_per_epoch) as advance:
        advance(step)
        for epoch in range(first_epoch, cfg.epochs):
            (set_mode or (lambda m: m.train()))(model)
            if hasattr(objective, "start_epoch"):
                objective.start_epoch(epoch, cfg.epochs)
            # The epoch's order and augmentations come from the generator's state at its start:
            # a resumed epoch replays them and skips the batches already trained on.
            generator.set_state(epoch_start)
            batches = iterate(data, cfg.batch_size, shuffle=True, generator=generator, num_workers=ctx.workers,
                              pin_memory=ctx.pin_memory, part=part)
            for batch, (images, labels) in enumerate(batches):
                images = augment(images, cfg.augment, generator)
                if world.distributed and part is None:
                    mine = distributed.split_batch(len(labels))
                    images, labels = images[mine], labels[mine]
                if batch < done:
                    continue
                images, labels = ctx.to_device(images), ctx.to_device(labels)
                if not len(labels):
                    pieces = [(images, labels)] * per_batch
                else:
                    pieces = list(objective.split(images, labels)) if per_batch > 1 else [(images, labels)]
                if world.distributed:  # every rank takes the same number of steps (collectives pair up)
                    pieces += [(images[:0], labels[:0])] * (per_batch - len(pieces))
                for piece_images, piece_labels in pieces:
                    local = len(piece_labels)
                    optimizer.zero_grad(set_to_none=True)
                    if local:
                        with ctx.autocast("train"):
                            loss = objective.loss(model, piece_images, piece_labels)
                        if not torch.isfinite(loss):
                            last = f"last good checkpoint {saved}" if saved else "no checkpoint yet"
                            stage = f"{ctx.train_stage} ({description})" if ctx.train_stage else description
                            raise RtkError(f"{stage}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} ({last});"
                                           " lower the learning rate or check the data")
                        loss.backward()
                    if world.distributed and not distributed.all_reduce_gradients(params, local):
                        continue  # no rank had an example for this step
                    if local and hook("after_backward"):
                        objective.after_backward()
                    optimizer.step()
                    schedule.step()
                    step += 1
                    if local:
                        total += loss.item() * local
                        count += local
                    advance()
                if every and step // per_batch % every == 0 and batch + 1 < batches_per_epoch:
                    save(epoch, batch + 1, epoch_start)
            if world.distributed:
                distributed.average_buffers(model)
                total, count = distributed.all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64)).tolist()
            history.append(total / max(count, 1))
            done, total, count, epoch_start = 0, 0.0, 0, generator.get_state()
            save(epoch + 1, 0, epoch_start)
    distributed.sync_rng_from(0)
    model.eval()
    return history


class CrossEntropy(Objective):
    """Natural training: mean cross-entropy on clean images."""

    def loss(self, model, images, labels):
        return nn.functional.cross_entropy(model(images), labels)
