"""Training: the objective contract, the shared optimisation options, and the training loop."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from rtk.augment import augment
from rtk.services.checkpoints import rng_states, set_rng_states
from rtk.config.schema import TrainConfig  # noqa: F401  (re-exported: strategies subclass it)
from rtk.stages.context import RunContext
from rtk.data import iterate
from rtk.services import distributed
from rtk.services.metrics import finite
from rtk.services.state import StateFile
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
    if cfg.weight_decay and not cfg.decay_bias_and_norm:
        # Biases and norm scales/shifts are the parameters with fewer than 2 dimensions.
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        params = [group for group in params if group["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    betas = tuple(cfg.adam_betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise RtkError(f"adam_betas = {list(betas)}: give two numbers in [0, 1), e.g. [0.9, 0.999]")
    adam = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps, betas=betas)
    return (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(params, **adam)


def make_schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate multiplier per optimizer step: ``warmup_epochs`` of linear warm-up
    ((step+1)/W, so the first step already trains), then the schedule (cosine over the
    remaining steps; multistep at absolute epochs; constant)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if warm <= 0:
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                     lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
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

    Fast paths from ``ctx``: bf16 autocast around the loss (``ctx.run.amp``), channels_last
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
    return Training(model, data, objective, cfg, ctx, params=params, description=description, stream=stream,
                    set_mode=set_mode, checkpoint=checkpoint, resume=resume).run()


class Training:
    """One ``fit``: the model, its optimizer and schedule, the progress so far, and the training
    checkpoint (a resume-state file, rtk.services.state) it is saved to and restored from."""

    def __init__(self, model: nn.Module, data, objective: Objective, cfg: TrainConfig, ctx: RunContext, *,
                 params=None, description: str = "train", stream: int = 0, set_mode=None,
                 checkpoint: Path | None | str = "auto", resume: bool | None = None):
        self.model, self.data, self.objective, self.cfg, self.ctx = model, data, objective, cfg, ctx
        self.description, self.set_mode, self.world = description, set_mode or (lambda m: m.train()), ctx.world
        if ctx.run.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.hook("setup"):
            objective.setup(model, ctx.device)
        self.params = list(model.parameters() if params is None else params) + list(self.hook("parameters", list)())
        if self.world.distributed:  # identical starting weights on every rank, as DDP guarantees at construction
            distributed.broadcast_module(model)
            for p in self.hook("parameters", list)():
                p.data.copy_(distributed.broadcast(p.detach(), 0))
        self.optimizer = make_optimizer(self.params, cfg)
        self.per_batch = max(1, int(self.hook("steps_per_batch", 1)))
        self.batches_per_epoch = math.ceil(len(data) / cfg.batch_size)
        self.schedule = make_schedule(self.optimizer, cfg, self.batches_per_epoch * self.per_batch)
        self.generator = ctx.generator(offset=1000 + stream)
        self.history, self.step, self.first_epoch, self.done, self.total, self.count = [], 0, 0, 0, 0.0, 0
        self.curve = Curve()
        self.epoch_start = self.generator.get_state()
        self.saved = None  # the path of the last checkpoint this training can go back to
        path = ctx.train_checkpoint() if checkpoint == "auto" else checkpoint
        resume = ctx.resume if resume is None else resume
        self.state = StateFile(Path(path), resume, kind="training") if path is not None else None
        self.fingerprint = {"training": description, "stream": stream, "examples": len(data),
                            "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                            "weights": ",".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())}
        self.restore()

    def hook(self, name: str, default=None):
        return getattr(self.objective, name, default)  # plain objects need only loss()

    def restore(self) -> None:
        """Continue from the checkpoint when resuming (every rank reads what rank 0 wrote); else
        delete a stale one of an earlier run, which must never be resumed from."""
        loaded = self.state.load(self.fingerprint) if self.state is not None else None
        if loaded is None:
            if self.state is not None and not self.state.resume and self.world.is_main:
                self.state.remove()
            return
        self.model.load_state_dict(loaded["model"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        if self.hook("load_state_dict") and loaded.get("objective"):
            self.objective.load_state_dict(loaded["objective"])
        self.schedule.load_state_dict(loaded["schedule"])
        set_rng_states(loaded["rng"])
        self.history, self.step, self.first_epoch = list(loaded["history"]), loaded["step"], loaded["epoch"]
        self.done, self.total, self.count = loaded["done"], loaded["total"], loaded["count"]
        self.epoch_start, self.saved = loaded["generator"], self.state.path

    def save(self, epoch: int, done: int) -> None:
        """Checkpoint on rank 0: ``done`` batches of ``epoch`` trained."""
        if self.state is None or not self.world.is_main:
            return
        self.state.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "schedule": self.schedule.state_dict(), "rng": rng_states(),
                         "objective": self.hook("state_dict", dict)(), "generator": self.epoch_start, "epoch": epoch,
                         "done": done, "step": self.step, "history": self.history, "total": self.total,
                         "count": self.count}, self.fingerprint)
        self.saved = self.state.path

    def run(self) -> list[float]:
        world, cfg = self.world, self.cfg
        self.curve.begin()
        if world.distributed and world.rank > 0:
            torch.manual_seed(self.ctx.seed * 1_000_003 + 7919 * world.rank + self.step)
        with self.ctx.progress(self.description, cfg.epochs * self.batches_per_epoch * self.per_batch) as advance:
            advance(self.step)
            for epoch in range(self.first_epoch, cfg.epochs):
                self.train_epoch(epoch, advance)
        distributed.sync_rng_from(0)
        self.model.eval()
        return self.history

    def train_epoch(self, epoch: int, advance) -> None:
        cfg, every = self.cfg, self.cfg.checkpoint_every
        self.set_mode(self.model)
        if hasattr(self.objective, "start_epoch"):
            self.objective.start_epoch(epoch, cfg.epochs)
        # The epoch's order and augmentations come from the generator's state at its start:
        # a resumed epoch replays them and skips the batches already trained on.
        self.generator.set_state(self.epoch_start)
        for batch, (images, labels) in enumerate(self.batches()):
            if batch < self.done:
                continue
            for piece_images, piece_labels in self.pieces(images, labels):
                if self.train_step(epoch, piece_images, piece_labels):
                    advance()
                    self.curve.after_step(self, epoch)
            if every and self.step // self.per_batch % every == 0 and batch + 1 < self.batches_per_epoch:
                self.save(epoch, batch + 1)
        if self.world.distributed:
            distributed.average_buffers(self.model)
            sums = torch.tensor([self.total, float(self.count)], dtype=torch.float64)
            self.total, self.count = distributed.all_reduce_sum(sums).tolist()
        self.history.append(self.total / max(self.count, 1))
        self.curve.after_epoch(self, epoch, self.count)
        self.done, self.total, self.count, self.epoch_start = 0, 0.0, 0, self.generator.get_state()
        self.save(epoch + 1, 0)

    def batches(self):
        """The epoch's batches, augmented; under torchrun this rank's slice of each."""
        cfg, world = self.cfg, self.world
        # Without augmentation a rank loads only its slice; augmentations draw from the generator for
        # the whole global batch, so then every rank augments the global batch and keeps its slice.
        part = distributed.split_batch if world.distributed and cfg.augment == "none" else None
        for images, labels in iterate(self.data, cfg.batch_size, shuffle=True, generator=self.generator,
                                      num_workers=self.ctx.run.workers, pin_memory=self.ctx.run.pin_memory, part=part):
            images = augment(images, cfg.augment, self.generator)
            if world.distributed and part is None:
                mine = distributed.split_batch(len(labels))
                images, labels = images[mine], labels[mine]
            yield images, labels

    def pieces(self, images: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch on the device as the objective's ``steps_per_batch`` steps."""
        images, labels = self.ctx.to_device(images), self.ctx.to_device(labels)
        if not len(labels):
            pieces = [(images, labels)] * self.per_batch
        else:
            pieces = list(self.objective.split(images, labels)) if self.per_batch > 1 else [(images, labels)]
        if self.world.distributed:  # every rank takes the same number of steps (collectives pair up)
            pieces += [(images[:0], labels[:0])] * (self.per_batch - len(pieces))
        return pieces

    def train_step(self, epoch: int, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """One optimizer step on a piece (this rank's part of it); False when no rank had an example."""
        local = len(labels)
        self.optimizer.zero_grad(set_to_none=True)
        if local:
            with self.ctx.autocast("train"):
                loss = self.objective.loss(self.model, images, labels)
            if not torch.isfinite(loss):
                last = f"last good checkpoint {self.saved}" if self.saved else "no checkpoint yet"
                stage = f"{self.ctx.train_stage} ({self.description})" if self.ctx.train_stage else self.description
                raise RtkError(f"{stage}: loss became {loss.item()} at epoch {epoch + 1}, step {self.step + 1}"
                               f" ({last}); lower the learning rate or check the data")
            loss.backward()
        if self.world.distributed and not distributed.all_reduce_gradients(self.params, local):
            return False
        if local and self.hook("after_backward"):
            self.objective.after_backward()
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        if local:
            self.total += loss.item() * local
            self.count += local
            self.curve.add(loss.item(), local)
        return True


class Curve:
    """What one ``fit`` writes to metrics.jsonl (rtk.services.metrics): a record after every
    epoch, and every ``[run] log_every`` steps of epochs longer than that. It is handed the
    Training at each call rather than holding it: a reference cycle would keep the training data
    (memory-mapped feature caches) alive until the garbage collector's next pass."""

    def __init__(self):
        self.window_total, self.window_count = 0.0, 0

    @staticmethod
    def steps_per_epoch(t: "Training") -> int:
        return t.batches_per_epoch * t.per_batch

    def begin(self) -> None:
        self.started = self.epoch_started = time.perf_counter()

    def add(self, loss: float, count: int) -> None:
        self.window_total += loss * count
        self.window_count += count

    def base(self, t: "Training", kind: str, epoch: int) -> dict:
        return {"kind": kind, "fit": t.description, "epoch": epoch, "epochs": t.cfg.epochs, "step": t.step,
                "steps_per_epoch": self.steps_per_epoch(t), "lr": t.optimizer.param_groups[0]["lr"]}

    def after_step(self, t: "Training", epoch: int) -> None:
        every = t.ctx.run.log_every
        if not every or self.steps_per_epoch(t) <= every or t.step % every or not self.window_count:
            return
        record = self.base(t, "step", epoch + 1)
        record["loss"] = finite(self.window_total / self.window_count)
        record["seconds"] = round(time.perf_counter() - self.started, 3)
        self.window_total, self.window_count = 0.0, 0
        t.ctx.log_metrics(record)

    def after_epoch(self, t: "Training", epoch: int, examples: int) -> None:
        now = time.perf_counter()
        seconds = now - self.epoch_started
        record = self.base(t, "epoch", epoch + 1)
        record.update(loss=finite(t.history[-1]), seconds=round(now - self.started, 3),
                      epoch_seconds=round(seconds, 3), examples_per_s=round(examples / max(seconds, 1e-9), 1))
        if t.ctx.metrics is not None and t.world.is_main and t.ctx.run.curve_examples:
            accuracy = clean_accuracy(t.model, t.data, t.ctx, t.ctx.run.curve_examples, t.cfg.batch_size)
            if accuracy is not None:
                record.update(clean_acc=accuracy, clean_acc_on="train")
        self.window_total, self.window_count = 0.0, 0
        t.ctx.log_metrics(record)
        self.epoch_started = time.perf_counter()  # the accuracy above is not the next epoch's time


def clean_accuracy(model: nn.Module, data, ctx: RunContext, n: int, batch_size: int) -> float | None:
    """Accuracy of ``model`` in eval mode on the first ``n`` examples of ``data``; None when the
    model's outputs are not class scores for these labels (a contrastive objective's model).

    Not rtk.evaluation.robust_accuracy.evaluate (which rtk.stages.source.accuracy calls): that one
    shares batches across ranks through collectives and keeps resume state in the run folder,
    while this runs on rank 0 alone, in the middle of a training."""
    from rtk.data import load_batches

    count = min(n, len(data))
    if not count:
        return None
    was_training = model.training
    model.eval()
    correct = 0
    try:
        batches = [torch.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
        with torch.no_grad(), ctx.autocast("eval"):
            for images, labels in load_batches(data, batches):
                logits = model(ctx.to_device(images))
                labels = ctx.to_device(labels)
                if logits.ndim != 2 or labels.ndim != 1 or int(labels.max()) >= logits.shape[1]:
                    return None
                correct += int((logits.argmax(1) == labels).sum())
    finally:
        model.train(was_training)
    return round(correct / count, 6)


class CrossEntropy(Objective):
    """Natural training: mean cross-entropy on clean images."""

    def loss(self, model, images, labels):
        return nn.functional.cross_entropy(model(images), labels)
