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
    """Adversarial fine-tuning from a random linear head ("RanLI"; Hua et al., "Initialization
    Matters for Adversarial Transfer Learning", arXiv:2312.05716; code DongXzz/RoLI). Head =
    Linear(feature_dim, C), weight kaiming-normal (fan_out), bias ``head_bias_init`` (the code's
    -log(99), src/models/mlp.py). Loss: PGD adversarial training, x' = PGD-Linf (random start)
    crafted in eval mode, unless the recipe's transfer.objective names another. After every
    epoch the weights are scored by PGD-``val_steps`` accuracy on the target's validation split
    (its ``val_fraction``), and the best epoch's are kept (``select``), as in the code.

    Variants (trainable parameters; encoder mode during training):

    - ``full``: everything; train mode.
    - ``bias``: encoder biases (``bias_params``) + head; eval (TinyTL-bias).
    - ``lora``: LoRA on q and v of every attention (timm's fused qkv) + head; eval, except the
      LoRA modules, whose dropout is active (the code runs the whole encoder in eval, which turns
      its LoRA dropout off; set ``lora_dropout = 0`` to reproduce that).
    - ``adapter``: a Pfeiffer adapter after each block's MLP + head; eval.
    - ``linear``: the head alone; eval. With ``lr`` = ``probe_lr`` and ``weight_decay`` =
      ``probe_weight_decay`` this is RoLI's stage 1, the code's RanLI-Linear run.

    Epoch selection (``select = "best"``): the validation attack is PGD-``val_steps`` with the
    training eps and step, random start, on every validation example in batches of
    ``batch_size``; an epoch is kept if it scores strictly higher than every earlier one and
    than 0 (if none does, the last epoch stays), as the code does in every run
    (src/engine/trainer.py:227-257; :267-285 then tests the kept weights). The code validates on
    a held-out split, never on the test set: for CIFAR the last 10% of the official training
    set (VTAB's train[45000:], src/data/vtab_datasets/cifar.py), for CUB, Stanford Dogs and
    Caltech-256 the val.json of data_splits/, disjoint from train and test. Here it is the
    target's ``val_fraction`` split (0.1 for RoLI's CIFAR: a stratified seeded draw, not VTAB's
    last 5,000 images); ``select = "best"`` refuses a target without one. ``select = "last"``
    keeps the last epoch and needs none.

    Defaults (the CIFAR configs, configs/*/cifar10_*.yaml): batch 64, 20 epochs, the first
    ``warmup_epochs`` = 10 a linear warm-up then cosine to 0, no augmentation, eps 8/255, 7 steps
    of 2/255. Learning rates are the rates the code trains at: its train.py:38 multiplies each
    config's BASE_LR by batch/256 = 1/4, so RanLI full fine-tuning's BASE_LR 5e-4
    (configs/finetune/cifar10_ranli.yaml, every dataset) is ``lr`` 1.25e-4 here (``roli``:
    1e-4 -> 2.5e-5). The other CIFAR-10 rates (BASE_LR / 4), set per variant: RanLI LoRA
    0.0025, RoLI LoRA 2.5e-4, adapter 0.0125, bias 1.25e-3, linear 0.0125 (CIFAR-100 linear:
    0.025). ``optimizer = "auto"``: AdamW (betas 0.9/0.999, eps ``adam_eps`` 1e-6) for every
    variant but ``linear``, which uses SGD momentum 0.9. ``weight_decay = 0.01``: the code
    hard-codes 0.01 for AdamW whatever its config says (src/solver/optimizer.py:31-45); its SGD
    takes the config's (linear: 0.01 on CIFAR-10, 0.001 on CIFAR-100). Which parameters decay
    (``no_decay``) follows the code's rule, by name: for AdamW (src/solver/optimizer.py:34-40)
    no decay for any name containing "bias", "LayerNorm.bias" or "LayerNorm.weight", so every
    bias and Swin's relative_position_bias_table are exempt while the LayerNorm weights, named
    norm1/norm2/norm, decay; for SGD and Adam (:55-57) only the head's bias is exempt. The PGD
    of training and validation keeps its best iterate by batch-mean loss (``pgd_keep``: the
    code's ``use_best=True``, src/adv_func.py:129-160, the default of both calls,
    src/engine/trainer.py:183 and :326).

    Deliberate differences from the code, each because the code's behaviour defeats its intent:
    LoRA and adapters start from ``"standard"`` inits (the code's all-zero inits,
    ``LORA.ZEROINIT: True`` in configs/lora/*_roli.yaml and src/models/vit_adapter/
    swin_transformer.py:95-99, are ``lora_init``/``adapter_init = "zero"``; with them LoRA never
    moves); warm-up is per iteration starting at lr/steps (the code steps it per epoch from lr 0,
    src/solver/lr_scheduler.py:41-65 and trainer.py:225, so its first epoch does not train);
    weight_decay = 0 keeps the chosen optimizer (the code then silently switches AdamW to SGD,
    src/solver/optimizer.py:92-125)."""

    epochs: int = option(20, min=0, max=100_000, help="fine-tuning epochs (RoLI CIFAR: 20)")
    batch_size: int = option(64, min=1, max=1_000_000, help="examples per step (RoLI: 64)")
    optimizer: Literal["auto", "sgd", "adam", "adamw"] = option("auto", help=(
        "auto: AdamW, or SGD for variant linear (the code)"))
    lr: float = option(1.25e-4, min=0.0, help=(
        "fine-tuning learning rate (RanLI full fine-tuning: the code's BASE_LR 5e-4 x batch 64 / 256)"))
    weight_decay: float = option(0.01, min=0.0, help="weight decay (the code: 0.01, hard-coded for AdamW)")
    decay_bias_and_norm: bool = option(False, help=(
        "apply weight_decay to every parameter, no_decay's exemptions too (RoLI: no)"))
    no_decay: Literal["name", "rank"] = option("name", help=(
        'parameters exempt from weight decay. name: the code\'s rule (AdamW: every name containing "bias" or'
        ' "LayerNorm.weight", so Swin\'s relative_position_bias_table is exempt and its norm1/norm2 weights decay;'
        " SGD/Adam: the head's bias only); rank: tensors with fewer than 2 dimensions (biases, norm weights)"))
    schedule: Literal["constant", "cosine", "multistep"] = option("cosine", help=(
        "learning-rate schedule after the warm-up (RoLI: cosine to 0)"))
    warmup_epochs: float = option(10.0, min=0.0, help="linear warm-up epochs, per iteration (RoLI: 10)")
    adam_eps: float = option(1e-6, min=0.0, help="AdamW epsilon (RoLI: 1e-6)")
    variant: Variant = option("full", help="which parameters fine-tune: full, bias, lora, adapter or linear")
    eps: float = option(8 / 255, min=0.0, help="Linf radius of the training and validation attacks")
    alpha: float = option(2 / 255, min=0.0, help="step size of the training and validation attacks")
    steps: int = option(7, min=1, help="training attack steps")
    pgd_keep: Literal["best-batch", "last"] = option("best-batch", help=(
        "iterate the training and validation PGD keep: best-batch, the highest batch-mean loss (the code's"
        " use_best); last, the last one (torchattacks)"))
    select: Literal["best", "last"] = option("best", help=(
        "weights kept: best, the epoch with the highest validation robust accuracy (the code; needs the target's"
        " val_fraction); last, the last epoch"))
    val_steps: int = option(10, min=1, help="PGD steps of the validation attack that picks the epoch (RoLI: 10)")
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
    Learning", arXiv:2312.05716, code DongXzz/RoLI). Stage 1, adversarial linear probing, is
    ``ranli`` with variant ``linear`` (the code's RanLI-Linear run, configs/linear/
    cifar10_ranli.yaml): a random head trained with PGD adversarial training on the frozen
    encoder (eval mode) by SGD momentum 0.9, ``probe_lr``, ``probe_weight_decay`` on the weight
    only, ``probe_epochs`` with the same warm-up + cosine schedule; the head of the epoch with the
    best validation robust accuracy (PGD-``val_steps`` on the target's validation split, its
    ``val_fraction``) is kept, always (the code's best_model.pth, README "RoLI"). Stage 2
    starts from exactly that head and is ``ranli``'s fine-tuning, whose epoch ``select`` picks.

    Defaults as ``ranli`` but the fine-tuning lr, 2.5e-5 (RoLI full fine-tuning on CIFAR: the
    code's BASE_LR 1e-4 x 64/256, configs/finetune/cifar10_roli.yaml); stage 1: lr 0.0125
    (BASE_LR 0.05 x 64/256, configs/linear/cifar10_ranli.yaml), weight decay 0.01 (CIFAR-100:
    0.025 and 0.001), 20 epochs, PGD-10 validation."""

    lr: float = option(2.5e-5, min=0.0, help=(
        "stage 2 fine-tuning learning rate (RoLI full fine-tuning on CIFAR: the code's BASE_LR 1e-4 x 64 / 256)"))

    probe_lr: float = option(0.0125, min=0.0, help=(
        "stage 1 SGD learning rate (RoLI CIFAR-10: the code's BASE_LR 0.05 x 64 / 256)"))
    probe_epochs: int = option(20, min=1, max=100_000, help="stage 1 epochs")
    probe_weight_decay: float = option(0.01, min=0.0, help="stage 1 weight decay on the head weight")


@rtk.hookimpl
def register_transfer_strategies(register):
    register("roli", "rtk_plugins.roli.strategy:RoLI", config=RoLIConfig, takes_objective=True,
             summary="RoLI: adversarial linear probe (best val robust epoch), then adversarial fine-tuning from that"
                     " head (best val robust epoch)")
    register("ranli", "rtk_plugins.roli.strategy:RanLI", config=RanLIConfig, takes_objective=True,
             summary="RanLI: adversarial fine-tuning (full, bias, LoRA, adapter, linear) from a random head (best val"
                     " robust epoch)")
