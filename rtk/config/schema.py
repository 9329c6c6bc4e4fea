"""Option sets shared by many components, kept free of torch so that listing and validating
recipes stays fast: every dataset config subclasses DatasetConfig, and every strategy that
trains weights subclasses TrainConfig."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rtk.config.fields import option


@dataclass
class DatasetConfig:
    """Options shared by every dataset."""

    classes: list[int] | None = option(None, help="keep only these classes (original label ids), e.g. [5, 6, 7, 8, 9]")
    remap: bool = option(True, help="relabel the kept classes 0..k-1 in the order listed (false keeps the original ids and class count, as split CIFAR-100 does)")
    per_class: int | None = option(None, min=1, help="keep N training examples per class (seeded): low-data regimes")
    val_fraction: float = option(0.0, min=0.0, max=0.9, help="hold out this fraction of the training set as a validation split (stratified, seeded)")
    seed: int = option(0, min=-2**63, max=2**64 - 1, help="seed of the per_class and validation draws (independent of the run seed, so every run sees the same subset)")



@dataclass
class TrainConfig:
    """Optimisation options shared by source training and the strategies that train weights."""

    epochs: int = option(10, min=0, max=100_000, help="passes over the training set")
    batch_size: int = option(128, min=1, max=1_000_000, help="examples per step")
    optimizer: Literal["sgd", "adam", "adamw"] = option("adam", help="optimizer")
    lr: float = option(1e-3, min=0.0, help="learning rate")
    momentum: float = option(0.9, min=0.0, max=1.0, help="SGD momentum")
    weight_decay: float = option(0.0, min=0.0, help="L2 weight decay (coupled for sgd/adam, decoupled for adamw)")
    decay_bias_and_norm: bool = option(True, help="apply weight_decay to biases and normalization parameters too (false: only to conv/linear weights, as TF codes that decay the DW variables do)")
    schedule: Literal["constant", "cosine", "multistep"] = option("constant", help="learning-rate schedule, stepped per iteration")
    milestones: list[float] = option(default_factory=list, help="multistep: epochs at which the rate is multiplied by gamma")
    gamma: float = option(0.1, min=0.0, help="multistep decay factor")
    warmup_epochs: float = option(0.0, min=0.0, help="linear learning-rate warm-up over this many epochs, per step, before the schedule")
    adam_eps: float = option(1e-8, min=0.0, help="Adam/AdamW epsilon")
    adam_betas: list[float] = option(default_factory=lambda: [0.9, 0.999], help="Adam/AdamW betas")
    augment: Literal["none", "crop", "flip", "crop-flip", "resized-crop-flip"] = option("none", help=(
        "batch augmentation (crop-flip = pad-4 random crop + horizontal flip; resized-crop-flip = ImageNet-style"
        " RandomResizedCrop, scale 0.08-1, ratio 3/4-4/3, back to the input size, + flip)"))
    checkpoint_every: int = option(0, min=0, help="also save a resumable training checkpoint every N steps (0: at the end of every epoch only)")
