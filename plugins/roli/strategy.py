"""RoLI and RanLI (Hua et al., "Initialization Matters for Adversarial Transfer Learning",
arXiv:2312.05716); options and defaults: rtk_plugins.roli.RoLIConfig / RanLIConfig. Warm-up and
AdamW's epsilon come from rtk.stages.training.fit (``cfg.warmup_epochs``, ``cfg.adam_eps``)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from rtk.models import model_mode
from rtk.data import iterate
from rtk.errors import RtkError
from rtk.config.schema import TrainConfig
from rtk.stages.strategy import TransferStrategy, set_trainable
from rtk.stages.training import fit
from rtk_plugins.roli.peft_modules import add_adapters, add_lora, bias_parameters
from rtk_plugins.attacks.pgd import torchattacks_pgd


def random_head(feature_dim: int, num_classes: int, bias: float, device) -> nn.Linear:
    """RoLI's head init: kaiming-normal (fan_out) weight, constant bias (-log(99) by default)."""
    head = nn.Linear(feature_dim, num_classes).to(device)
    nn.init.kaiming_normal_(head.weight, mode="fan_out")
    nn.init.constant_(head.bias, bias)
    return head


@torch.no_grad()
def _correct(model, images, labels) -> int:
    return int((model(images).argmax(1) == labels).sum())


def robust_accuracy(model, data, ctx, eps: float, alpha: float, steps: int, batch_size: int) -> float:
    """PGD-Linf (random start) accuracy of ``model`` in eval mode on ``data``."""
    correct = 0
    with model_mode(model, train=False):
        for images, labels in iterate(data, batch_size):
            images, labels = ctx.to_device(images), ctx.to_device(labels)
            attack = torchattacks_pgd(model, "Linf", eps, alpha, steps, True)
            correct += _correct(model, attack(images, labels), labels)
    return correct / max(1, len(data))


class BestHeadByValidation:
    """Wraps the probe's objective; at the start of every epoch (and once after training, via
    ``finish``) it scores the head of the epoch just finished by validation robust accuracy and
    keeps the best. Its record is saved in training checkpoints, so a resumed probe keeps it."""

    def __init__(self, objective, model, val, ctx, cfg):
        self.objective, self.model, self.val, self.ctx, self.cfg = objective, model, val, ctx, cfg
        self.best_score, self.best_epoch, self.best_head = -1.0, -1, None
        self.scores: list[float] = []

    def loss(self, model, images, labels):
        return self.objective.loss(model, images, labels)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if epoch > 0 and len(self.scores) < epoch:
            self._score(epoch - 1)

    def finish(self, epochs: int) -> None:
        if len(self.scores) < epochs:
            self._score(epochs - 1)

    def _score(self, epoch: int) -> None:
        cfg = self.cfg
        score = robust_accuracy(self.model, self.val, self.ctx, cfg.eps, cfg.alpha, cfg.val_steps, cfg.batch_size)
        self.scores.append(score)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_head = {k: v.detach().clone() for k, v in self.model.head.state_dict().items()}

    def state_dict(self) -> dict:
        state = {"scores": torch.tensor(self.scores, dtype=torch.float64), "best_epoch": torch.tensor(self.best_epoch)}
        if self.best_head is not None:
            state.update({f"head.{k}": v for k, v in self.best_head.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scores = [float(s) for s in state["scores"]]
        self.best_epoch = int(state["best_epoch"])
        self.best_score = self.scores[self.best_epoch] if self.best_epoch >= 0 else -1.0
        head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        self.best_head = head or None


class RoLI(TransferStrategy):
    """``roli`` (``robust_init``: the head starts from stage 1's adversarial linear probe) and, with
    ``robust_init = False``, ``ranli`` (from a random head)."""

    def __init__(self, config, robust_init: bool = True):
        self.config = config
        self.robust_init = robust_init
        self.probe: BestHeadByValidation | None = None  # stage 1's record (tests and reports read it)
        self.initial_head: dict | None = None  # the head stage 2 started from

    def _attack_objective(self):
        from rtk_plugins.objectives.adversarial_training import PGDAdversarialTraining
        from rtk_plugins.objectives import PGDATConfig

        cfg = self.config
        return PGDAdversarialTraining(PGDATConfig(norm="Linf", eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha,
                                                  random_start=True, attack_mode="eval"))

    def _install_variant(self, model) -> list[nn.Parameter]:
        """Add the variant's modules and return the parameters it trains (head included)."""
        cfg = self.config
        encoder = model.body
        if cfg.variant == "full":
            extra = list(encoder.parameters()) + list(model.preprocess.parameters())
        elif cfg.variant == "bias":
            extra = bias_parameters(encoder, cfg.bias_params)
        elif cfg.variant == "lora":
            extra = [p for m in add_lora(encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_init)
                     for p in m.parameters()]
        elif cfg.variant == "adapter":
            extra = [p for m in add_adapters(encoder, cfg.adapter_reduction, cfg.adapter_init) for p in m.parameters()]
        else:
            extra = []
        return extra + list(model.head.parameters())

    def _set_mode(self, model) -> None:
        if self.config.variant == "full":
            model.train()
            return
        model.eval()
        for qkv in (m for m in model.modules() if hasattr(m, "lora")):
            qkv.lora.train()  # LoRA's own dropout acts; the frozen encoder stays in eval

    def adversarial_probe(self, model, data, ctx) -> None:
        """Stage 1: train the head adversarially on the frozen encoder; keep the best epoch's."""
        cfg = self.config
        if data.val is None or len(data.val) == 0:
            raise RtkError("roli: the adversarial linear probe picks its epoch by validation robust accuracy, but the"
                           " target has no validation split; set [target] val_fraction (RoLI's CIFAR split: 0.1)")
        stage = TrainConfig(epochs=cfg.probe_epochs, batch_size=cfg.batch_size, optimizer="sgd", lr=cfg.probe_lr,
                             momentum=0.9, weight_decay=cfg.probe_weight_decay, decay_bias_and_norm=False,
                             schedule="cosine", augment=cfg.augment, checkpoint_every=cfg.checkpoint_every,
                             warmup_epochs=cfg.warmup_epochs)
        self.probe = BestHeadByValidation(self._attack_objective(), model, data.val, ctx, cfg)
        fit(model, data.train, self.probe, stage, ctx, params=list(model.head.parameters()),
            set_mode=lambda m: m.eval(), description="adversarial linear probe")
        self.probe.finish(cfg.probe_epochs)
        model.head.load_state_dict(self.probe.best_head)

    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        set_trainable(model, False)
        model.eval()
        model.head = random_head(model.feature_dim, data.num_classes, cfg.head_bias_init, ctx.device)
        if self.robust_init:
            self.adversarial_probe(model, data, ctx)
        self.initial_head = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
        params = self._install_variant(model)
        for p in params:
            p.requires_grad_(True)
        optimizer = cfg.optimizer if cfg.optimizer != "auto" else ("sgd" if cfg.variant == "linear" else "adamw")
        stage = dataclasses.replace(cfg, optimizer=optimizer)
        fit(model, data.train, objective or self._attack_objective(), stage, ctx, params=params,
            set_mode=self._set_mode, description=f"adversarial fine-tuning ({cfg.variant})")
        model.eval()
        return model

    def rebuild(self, model, num_classes: int):
        """A head for ``num_classes`` plus the variant's LoRA or adapter modules."""
        device = next(model.parameters()).device
        model.head = random_head(model.feature_dim, num_classes, self.config.head_bias_init, device)
        self._install_variant(model)
        return model


class RanLI(RoLI):
    """``ranli``: RoLI's adversarial fine-tuning from a random head."""

    def __init__(self, config):
        super().__init__(config, robust_init=False)
