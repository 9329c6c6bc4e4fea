"""RoLI and RanLI (Hua et al., "Initialization Matters for Adversarial Transfer Learning",
arXiv:2312.05716; code DongXzz/RoLI); options and defaults: rtk_plugins.roli.RoLIConfig / RanLIConfig. Warm-up and
AdamW's epsilon come from rtk.stages.training.fit (``cfg.warmup_epochs``, ``cfg.adam_eps``)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from rtk.models import model_mode
from rtk.data import iterate
from rtk.errors import RtkError
from rtk.config.schema import TrainConfig
from rtk.services import distributed
from rtk.stages.strategy import TransferStrategy, set_trainable
from rtk.stages.training import Objective, Training, make_optimizer, make_schedule
from rtk_plugins.roli.peft_modules import add_adapters, add_lora, bias_parameters
from rtk_plugins.attacks.pgd import pgd_run


def random_head(feature_dim: int, num_classes: int, bias: float, device) -> nn.Linear:
    """RoLI's head init: kaiming-normal (fan_out) weight, constant bias (-log(99) by default)."""
    head = nn.Linear(feature_dim, num_classes).to(device)
    nn.init.kaiming_normal_(head.weight, mode="fan_out")
    nn.init.constant_(head.bias, bias)
    return head


@torch.no_grad()
def _correct(model, images, labels) -> int:
    return int((model(images).argmax(1) == labels).sum())


def robust_accuracy(model, data, ctx, eps: float, alpha: float, steps: int, batch_size: int,
                    keep: str = "last") -> float:
    """PGD-Linf (random start) accuracy of ``model`` in eval mode on ``data``, every example attacked
    (as the code's validation, src/engine/trainer.py:305-329), in order, ``batch_size`` at a time."""
    correct = 0
    with model_mode(model, train=False):
        attack = pgd_run(model, "Linf", eps, alpha, steps, True, keep)
        for images, labels in iterate(data, batch_size):
            images, labels = ctx.to_device(images), ctx.to_device(labels)
            correct += _correct(model, attack(images, labels), labels)
    return correct / max(1, len(data))


# -- weight decay: which parameters the code exempts ------------------------------------------------------------


def exempt_from_decay(name: str, param: nn.Parameter, rule: str, optimizer: str) -> bool:
    """Whether ``rule`` exempts the parameter ``name`` (a name in the rtk model) from weight decay.

    ``"name"`` is the code's rule (DongXzz/RoLI src/solver/optimizer.py): for AdamW (:34-40) every
    name containing "bias", "LayerNorm.bias" or "LayerNorm.weight" (timm and the code's Swin name
    their LayerNorms norm1/norm2/norm, so their weights decay, while their biases and Swin's
    relative_position_bias_table do not); for SGD and Adam (:55-57) only the head's bias (the
    code's ``last_layer.bias``, rtk's ``head.bias``). ``"rank"``: every tensor with fewer than 2
    dimensions (biases and norm weights), rtk's generic rule.
    """
    if rule == "rank":
        return param.ndim < 2
    if optimizer == "adamw":
        return any(key in name for key in ("bias", "LayerNorm.bias", "LayerNorm.weight"))
    return name == "head.bias"


def decay_groups(model: nn.Module, params, cfg) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, exempt): ``params`` split by ``cfg.no_decay`` for ``cfg.optimizer``; nothing is exempt
    when ``cfg.decay_bias_and_norm``. Parameters that are not the model's (an objective's) decay."""
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = [], []
    for p in params:
        name = names.get(id(p))
        skip = (not cfg.decay_bias_and_norm and name is not None
                and exempt_from_decay(name, p, cfg.no_decay, cfg.optimizer))
        (exempt if skip else decayed).append(p)
    return decayed, exempt


def grouped_optimizer(decayed, exempt, cfg: TrainConfig) -> torch.optim.Optimizer:
    """rtk's optimizer for ``cfg`` with ``cfg.weight_decay`` on ``decayed`` and none on ``exempt``."""
    decayed = [p for p in decayed if p.requires_grad]
    exempt = [p for p in exempt if p.requires_grad]
    every = dataclasses.replace(cfg, decay_bias_and_norm=True)
    if not exempt or not cfg.weight_decay:
        return make_optimizer(decayed + exempt, every)
    if not decayed:
        return make_optimizer(exempt, dataclasses.replace(every, weight_decay=0.0))
    optimizer = make_optimizer(decayed, every)
    optimizer.add_param_group({"params": exempt, "weight_decay": 0.0})
    return optimizer


class GroupedTraining(Training):
    """rtk's training loop (rtk.stages.training.fit) with the code's weight-decay groups: the
    optimizer and schedule are rebuilt before a checkpoint is restored into them."""

    def restore(self) -> None:  # Training.__init__ calls it after building its own optimizer and schedule
        decayed, exempt = decay_groups(self.model, self.params, self.cfg)
        self.optimizer = grouped_optimizer(decayed, exempt, self.cfg)
        self.schedule = make_schedule(self.optimizer, self.cfg, self.batches_per_epoch * self.per_batch)
        super().restore()


# -- epoch selection ----------------------------------------------------------------------------------------------


class BestEpochByValidation:
    """Wraps a training objective; at the start of every epoch (and once after training, via
    ``finish``) it scores the weights of the epoch just finished by validation robust accuracy
    and keeps a copy of the best epoch's ``names`` tensors (model state-dict keys). As the code
    (src/engine/trainer.py:246-257, :267-285): an epoch must score strictly higher than every
    earlier one, and than 0, to be kept; ``restore_best`` loads the kept tensors, or leaves the
    last epoch's weights when no epoch scored above 0. Every other objective hook is the wrapped
    objective's. The record is saved in training checkpoints, so a resumed run keeps it."""

    def __init__(self, objective, model, val, ctx, cfg, names):
        self.objective, self.model, self.val, self.ctx, self.cfg = objective, model, val, ctx, cfg
        self.names = list(names)
        self.best_score, self.best_epoch, self.best_state = 0.0, -1, None
        self.scores: list[float] = []
        self.fit_name = "train"  # the fit's description, naming its curve in metrics.jsonl

    def __getattr__(self, name):  # setup, parameters, split, steps_per_batch, after_backward, ...
        if name == "objective":
            raise AttributeError(name)
        return getattr(self.objective, name)

    def loss(self, model, images, labels):
        return self.objective.loss(model, images, labels)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if epoch > 0 and len(self.scores) < epoch:
            self._score(epoch - 1)
        if hasattr(self.objective, "start_epoch"):
            self.objective.start_epoch(epoch, epochs)

    def finish(self, epochs: int) -> None:
        if len(self.scores) < epochs:
            self._score(epochs - 1)

    def _score(self, epoch: int) -> None:
        cfg = self.cfg
        score = robust_accuracy(self.model, self.val, self.ctx, cfg.eps, cfg.alpha, cfg.val_steps, cfg.batch_size,
                                cfg.pgd_keep)
        # Under torchrun every rank scores (its random starts differ); rank 0's score decides, so all keep one epoch.
        score = float(distributed.broadcast(torch.tensor([score], dtype=torch.float64), 0)[0])
        self.scores.append(score)
        self.ctx.log_metrics({"kind": "validation", "fit": self.fit_name, "epoch": epoch + 1, "val_robust_acc": score})
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            state = self.model.state_dict()
            self.best_state = {k: state[k].detach().clone() for k in self.names}

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)

    @property
    def best_head(self) -> dict | None:
        """The kept epoch's head (keys as ``model.head.state_dict()``), when the head is among ``names``."""
        if self.best_state is None:
            return None
        return {k[len("head."):]: v for k, v in self.best_state.items() if k.startswith("head.")} or None

    def state_dict(self) -> dict:
        state = {"select.scores": torch.tensor(self.scores, dtype=torch.float64),
                 "select.best_epoch": torch.tensor(self.best_epoch)}
        if self.best_state is not None:
            state.update({f"select.best.{k}": v for k, v in self.best_state.items()})
        inner = getattr(self.objective, "state_dict", None)
        state.update({f"objective.{k}": v for k, v in (inner() if inner else {}).items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scores = [float(s) for s in state["select.scores"]]
        self.best_epoch = int(state["select.best_epoch"])
        self.best_score = self.scores[self.best_epoch] if self.best_epoch >= 0 else 0.0
        best = {k[len("select.best."):]: v for k, v in state.items() if k.startswith("select.best.")}
        self.best_state = best or None
        inner = {k[len("objective."):]: v for k, v in state.items() if k.startswith("objective.")}
        if inner and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(inner)


class AdversarialTraining(Objective):
    """RoLI's training loss: cross-entropy on x' = PGD-Linf (random start) crafted in eval mode
    (src/adv_func.py:129-160), keeping the iterate ``keep`` says (the code: ``best-batch``)."""

    def __init__(self, eps: float, alpha: float, steps: int, keep: str):
        self.eps, self.alpha, self.steps, self.keep = eps, alpha, steps, keep

    def loss(self, model, images, labels):
        with model_mode(model, train=False):
            adversarial = pgd_run(model, "Linf", self.eps, self.alpha, self.steps, True, self.keep)(images, labels)
        return nn.functional.cross_entropy(model(adversarial.detach()), labels)


def _selected_names(model: nn.Module, params) -> list[str]:
    """The state-dict keys an epoch's weights are: the trained parameters and every (persistent) buffer."""
    trained = {id(p) for p in params}
    names = {n for n, p in model.named_parameters() if id(p) in trained} | {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict() if k in names]


class RoLI(TransferStrategy):
    """``roli`` (``robust_init``: the head starts from stage 1's adversarial linear probe) and, with
    ``robust_init = False``, ``ranli`` (from a random head)."""

    def __init__(self, config, robust_init: bool = True):
        self.config = config
        self.robust_init = robust_init
        self.probe: BestEpochByValidation | None = None  # stage 1's record (tests and reports read it)
        self.selection: BestEpochByValidation | None = None  # stage 2's record when select = "best"
        self.initial_head: dict | None = None  # the head stage 2 started from

    def _attack_objective(self):
        cfg = self.config
        return AdversarialTraining(cfg.eps, cfg.alpha, cfg.steps, cfg.pgd_keep)

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

    def _validation(self, data, why: str):
        if data.val is None or len(data.val) == 0:
            raise RtkError(f"{why} picks its epoch by validation robust accuracy, but the target has no validation"
                           " split; set [target] val_fraction (RoLI's CIFAR split: 0.1)")
        return data.val

    def _train(self, model, data, objective, stage, ctx, params, set_mode, description, select: bool):
        """``fit`` with the code's weight-decay groups; with ``select`` the best validation epoch's weights are
        kept (returns its record)."""
        selection = None
        if select:
            selection = BestEpochByValidation(objective, model, data.val, ctx, self.config,
                                              _selected_names(model, params))
            selection.fit_name = description
            objective = selection
        GroupedTraining(model, data.train, objective, stage, ctx, params=params, set_mode=set_mode,
                        description=description).run()
        if selection is not None:
            selection.finish(stage.epochs)
            selection.restore_best()
        return selection

    def adversarial_probe(self, model, data, ctx) -> None:
        """Stage 1: train the head adversarially on the frozen encoder; keep the best epoch's."""
        cfg = self.config
        self._validation(data, "roli: the adversarial linear probe")
        stage = dataclasses.replace(cfg, epochs=cfg.probe_epochs, optimizer="sgd", lr=cfg.probe_lr, momentum=0.9,
                                    weight_decay=cfg.probe_weight_decay)
        self.probe = self._train(model, data, self._attack_objective(), stage, ctx, list(model.head.parameters()),
                                 lambda m: m.eval(), "adversarial linear probe", select=True)

    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        if cfg.select == "best":
            self._validation(data, f"{'roli' if self.robust_init else 'ranli'}: select = \"best\"")
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
        self.selection = self._train(model, data, objective or self._attack_objective(), stage, ctx, params,
                                     self._set_mode, f"adversarial fine-tuning ({cfg.variant})",
                                     select=cfg.select == "best")
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
