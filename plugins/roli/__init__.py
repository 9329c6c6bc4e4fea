"""RoLI (Hua et al., "Initialization Matters for Adversarial Transfer Learning", CVPR 2024,
arXiv:2312.05716; code DongXzz/RoLI): the ``roli`` strategy (adversarial linear probe, then
adversarial fine-tuning from that head) and ``ranli`` (the same fine-tuning from a random head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import TrainConfig, option

Variant = Literal["full", "bias", "lora", "adapter", "linear"]


@dataclass
class RanLIConfig(TrainConfig):
    """Adversarial fine-tuning from a random linear head ("RanLI"; Hua et al., arXiv:2312.05716,
    code DongXzz/RoLI). Head = Linear(feature_dim, C), weight kaiming-normal (fan_out), bias
    ``head_bias_init`` (the code's -log(99)). Loss: PGD adversarial training, x' = PGD-Linf
    (random start) crafted in eval mode, unless ``[transfer.objective]`` names another.

    Variants (trainable parameters; encoder mode during training):

    - ``full``: everything; train mode.
    - ``bias``: encoder biases (``bias_params``) + head; eval (TinyTL-bias).
    - ``lora``: LoRA on q and v of every attention (timm's fused qkv) + head; eval, except the
      LoRA modules, whose dropout is active (the code runs the whole encoder in eval, which turns
      its LoRA dropout off; set ``lora_dropout = 0`` to reproduce that).
    - ``adapter``: a Pfeiffer adapter after each block's MLP + head; eval.
    - ``linear``: the head alone; eval.

    Defaults (the CIFAR configs, spec 4): batch 64, 20 epochs, the first ``warmup_epochs`` = 10
    a linear warm-up then cosine to 0, lr 5e-4 (RanLI full fine-tuning, every dataset; ``roli``
    defaults to its own 1e-4; the other CIFAR rates, set them per variant: LoRA 1e-3, adapter
    0.05, bias 5e-3, linear 0.05 for CIFAR-10 / 0.1 for CIFAR-100), no augmentation, eps 8/255,
    7 steps of 2/255. ``optimizer = "auto"``: AdamW (betas 0.9/0.999, eps ``adam_eps`` 1e-6) for
    every variant but ``linear``, which uses SGD momentum 0.9. ``weight_decay = 0.01`` on weights
    only, never on biases and norm parameters: the code hard-codes 0.01 for AdamW whatever its
    config says (spec 0.3c); here it is this option's default.

    Deliberate differences from the code, each because the code's behaviour defeats its intent:
    LoRA and adapters start from ``"standard"`` inits (the code's all-zero inits, spec 0.3a/b,
    are ``lora_init``/``adapter_init = "zero"``; with them LoRA never moves); warm-up is per
    iteration starting at lr/steps (the code steps it per epoch from lr 0, so its first epoch
    does not train, spec 0.3e); weight_decay = 0 keeps the chosen optimizer (the code silently
    switches AdamW to SGD, spec 0.3d); PGD keeps its last iterate (the code's ``use_best`` keeps
    the step with the highest batch-mean loss)."""

    epochs: int = option(20, min=0, max=100_000, help="fine-tuning epochs (RoLI CIFAR: 20)")
    batch_size: int = option(64, min=1, max=1_000_000, help="examples per step (RoLI: 64)")
    optimizer: Literal["auto", "sgd", "adam", "adamw"] = option("auto", help=(
        "auto: AdamW, or SGD for variant linear (the code)"))
    lr: float = option(5e-4, min=0.0, help="fine-tuning learning rate (RanLI full fine-tuning, every dataset: 5e-4)")
    weight_decay: float = option(0.01, min=0.0, help="decoupled weight decay on weights (the code hard-codes 0.01)")
    decay_bias_and_norm: bool = option(False, help=(
        "apply weight_decay to biases and normalization parameters too (RoLI: no)"))
    schedule: Literal["constant", "cosine", "multistep"] = option("cosine", help=(
        "learning-rate schedule after the warm-up (RoLI: cosine to 0)"))
    warmup_epochs: float = option(10.0, min=0.0, help="linear warm-up epochs, per iteration (RoLI: 10)")
    adam_eps: float = option(1e-6, min=0.0, help="AdamW epsilon (RoLI: 1e-6)")
    variant: Variant = option("full", help="which parameters fine-tune: full, bias, lora, adapter or linear")
    eps: float = option(8 / 255, min=0.0, help="Linf radius of the training attack")
    alpha: float = option(2 / 255, min=0.0, help="training attack step size")
    steps: int = option(7, min=1, help="training attack steps")
    head_bias_init: float = option(-math.log(99), help=(
        "initial bias of the random head (the code: -log(99), a 1% prior)"))
    lora_rank: int = option(16, min=1, help="LoRA rank r")
    lora_alpha: float = option(16.0, min=0.0, help="LoRA alpha (scale alpha / r)")
    lora_dropout: float = option(0.1, min=0.0, max=0.99, help="dropout on the LoRA input")
    lora_init: Literal["standard", "zero"] = option("standard", help=(
        "standard: A kaiming, B zero; zero: both zero (the code's ZEROINIT, LoRA never moves)"))
    adapter_reduction: int = option(8, min=1, help="adapter bottleneck = dim // reduction")
    adapter_init: Literal["standard", "zero"] = option("standard", help=(
        "standard: up-projection zero, down random; zero: all zero (the code)"))
    bias_params: Literal["name", "bias"] = option("name", help=(
        'variant bias: "name" trains every encoder parameter whose name contains "bias" (the'
        ' code, incl. Swin\'s relative_position_bias_table), "bias" only the *.bias vectors'))


@dataclass
class RoLIConfig(RanLIConfig):
    """Robust Linear Initialization (Hua et al., "Initialization Matters for Adversarial Transfer
    Learning", arXiv:2312.05716, code DongXzz/RoLI). Stage 1, adversarial linear probing: a
    random head (as ``ranli``) is trained with PGD adversarial training on the frozen encoder
    (eval mode) by SGD momentum 0.9, ``probe_lr``, ``probe_weight_decay`` on the weight only,
    ``probe_epochs`` with the same warm-up + cosine schedule; after every epoch the validation
    robust accuracy (PGD-``val_steps``, same eps and step) is measured on the target's
    validation split ([target] val_fraction; RoLI's CIFAR split is 0.1) and the best epoch's
    head is kept. Stage 2 starts from exactly that head and is ``ranli``'s fine-tuning.

    Defaults as ``ranli`` but the fine-tuning lr, 1e-4 (RoLI full fine-tuning on CIFAR); stage 1:
    lr 0.05 (CIFAR-10; 0.1 for CIFAR-100), weight decay 0.01, 20 epochs, PGD-10 validation."""

    lr: float = option(1e-4, min=0.0, help="stage 2 fine-tuning learning rate (RoLI full fine-tuning on CIFAR: 1e-4)")

    probe_lr: float = option(0.05, min=0.0, help="stage 1 SGD learning rate (RoLI CIFAR-10: 0.05)")
    probe_epochs: int = option(20, min=1, max=100_000, help="stage 1 epochs")
    probe_weight_decay: float = option(0.01, min=0.0, help="stage 1 weight decay on the head weight")
    val_steps: int = option(10, min=1, help="PGD steps of the validation attack that picks the stage 1 epoch")


@rtk.hookimpl
def register_transfer_strategies(register):
    register("roli", "rtk_plugins.roli.strategy:RoLI", config=RoLIConfig, takes_objective=True,
             summary="RoLI: adversarial linear probe (best val robust epoch), then adversarial fine-tuning from that"
                     " head")
    register("ranli", "rtk_plugins.roli.strategy:RanLI", config=RanLIConfig, takes_objective=True,
             summary="RanLI: adversarial fine-tuning (full, bias, LoRA, adapter, linear) from a random head")
