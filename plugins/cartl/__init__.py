"""CARTL (Chen et al., "CARTL: Cooperative Adversarially-Robust Transfer Learning", ICML 2021,
arXiv:2106.06667; code NISP-official/CARTL): the ``cartl-fdm`` source objective (feature distance
minimisation) and the ``neft`` transfer strategy (non-expansive fine-tuning).

Blocks: rtk counts blocks from the output with the head as the last one, exactly as CARTL's
``WRNBlocks`` does (src/networks/utils.py). rtk's ``wrn-34-10`` has 17 blocks = 15 residual
units + ``final`` (BN, activation, pool: CARTL's block 16, BN + ReLU) + the head (block 17), so
CARTL's k is rtk's k for WRNs. CARTL's ResNet-18 has 9 blocks (``ResnetBlocks``: the 8
BasicBlocks + the FC) while rtk's ``resnet18`` has 10 (a parameter-free ``pool`` block between
the last unit and the head), so rtk's k = CARTL's k + 1 there (CARTL's k = 2, the last unit +
FC, is rtk's k = 3: layer4.1 + pool + head). The one exception is CARTL's k = 1, the FC alone:
that is rtk's k = 1 (rtk's k = 2 fine-tunes the same weights, but cartl-fdm would regularise the
unpooled map at the pool's input instead of the pooled features at the FC's input).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import BatchNormOptions, HeadOptions, TrainConfig, option
from rtk.config.schema import HEAD_INIT_HELP, BatchNormStats, HeadInit


@dataclass
class CARTLFDMConfig:
    """CARTL stage 1, feature distance minimisation (Chen et al., "CARTL: Cooperative
    Adversarially-Robust Transfer Learning", arXiv:2106.06667; code NISP-official/CARTL
    src/trainer/robust_plus_regularization_trainer/robust_plus_singular_regularization_trainer.py):
    PGD adversarial training plus
    ``lam * sum_i ||r(x'_i) - r(x_i)||_2 / sqrt(d)``, where r is the INPUT of block ``k`` counted
    from the output (blocks[-k]), i.e. the output of the part that stays frozen when the last k
    blocks are fine-tuned, and d = C*H*W its size. x' = PGD-Linf (random start) crafted in eval
    mode; then two forward passes in train mode (x' and x, BN statistics updated by both), the
    gradient flowing through both features. The source rtk keeps is the last epoch; CARTL's
    teachers are the epoch with the best training-batch robust accuracy (see below).

    Defaults: the released teachers, eps 8/255, 7 steps of 2/255, lam 0.005, k = 4 (the
    teachers use k in {4, 6, 8}; 4 matches ``neft``'s default, so a recipe that changes neither
    pairs them; set both together). ``reduction = "sum"`` over the batch is the code's
    (so lam's effect grows with the batch size); ``"mean"`` divides by the batch size. Source
    training schedule of the paper (set in ``[source.train]``): SGD lr 0.1, momentum 0.9, wd
    5e-4, batch 128, 100 epochs, x0.2 at epochs 40/70/90, crop + flip (+ rotation 15 deg, which
    rtk does not offer) and the code's one-epoch linear warm-up (``warmup_epochs = 1``;
    recipes/cartl_cifar.toml sets it).

    Blocks: k counts as CARTL's does on WRNs; on ``resnet18`` rtk's k = CARTL's k + 1 (rtk has a
    parameter-free pool block before the head; CARTL's k = 1 is rtk's k = 1).

    Kept weights: rtk's source is the LAST epoch's model. CARTL's teachers are the
    ``-best_robust`` checkpoints (scripts/pwrn34_neft_sn_norm.sh loads
    ``cartl_wrn34_cifar100_{k}_0.005-best_robust``): the epoch whose mean robust accuracy on the
    training batches' own PGD examples, measured during training, was highest (the trainer file
    above, lines 130-134; the PGD-AT teacher at_wrn34_cifar100-best_robust of tl_from_at.sh and
    madry_neft_sn_norm.sh likewise, src/trainer/adv_trainer.py:63-67). rtk cannot keep that
    epoch yet: an objective has no hook after an epoch's last step or after training."""

    eps: float = option(8 / 255, min=0.0, help="Linf radius of the inner attack in [0, 1] pixel units")
    alpha: float = option(2 / 255, min=0.0, help="inner PGD step size")
    steps: int = option(7, min=1, help="inner PGD steps")
    random_start: bool = option(True, help="inner attack starts uniformly at random in the ball")
    k: int = option(4, min=1, help=(
        "blocks that will be fine-tuned, counted from the output"
        " (1 = the head): the feature is the input of blocks[-k]"))
    lam: float = option(0.005, min=0.0, help="weight of the feature distance (released teachers: 0.005)")
    reduction: Literal["sum", "mean"] = option("sum", help=(
        "how the per-example distances combine over the batch (sum: the code)"))


@dataclass
class NEFTConfig(HeadOptions, BatchNormOptions, TrainConfig):
    """CARTL stage 2, non-expansive fine-tuning (Chen et al., "CARTL: Cooperative
    Adversarially-Robust Transfer Learning", arXiv:2106.06667; code NISP-official/CARTL
    exps/neft_spectrum_norm.py, src/trainer/transfer_learning_trainer/sn_tl_trainer.py,
    src/networks/parseval_wrn.py, parseval_resnet.py). The last k blocks (counted from the output
    as rtk and CARTL both do; k = 1 is the head alone; on ``resnet18`` rtk's k = CARTL's k + 1,
    rtk having a parameter-free pool block before the head) are trained from the source weights
    (not re-initialised), everything before them frozen, with a fresh head.

    - ``convex_residual``: the residual units among the last k blocks compute
      0.5*shortcut(x) + 0.5*residual(x) (CARTL's ParsevalBasicBlock). Implemented for rtk's
      ``wrn*`` units and ``resnet18`` BasicBlocks (there relu(0.5*(residual + shortcut)), as
      parseval_resnet.py); other models need ``convex_residual = false``.
    - Spectral re-parameterisation W = beta * W_orig / sigma(W_orig) of the layers
      ``spectral_layers`` names: by default (``"code"``) CARTL's rule, every Conv2d/Linear that
      is a direct child of one of the last k blocks, and the head. On WRNs that is each unit's
      conv1, conv2 and 1x1 shortcut conv, as in CARTL; on ``resnet18`` it is the head alone, as
      in CARTL, whose ResNet BasicBlock nests its convolutions in Sequentials that the rule does
      not enter (``"all"`` also bounds every convolution inside the last k blocks, which is
      what "non-expansive" asks of them but not what the code ran). sigma is u^T W v with
      W reshaped to (out, in*kh*kw) (the matrix norm of the reshaped kernel, not the conv
      operator's), u, v updated by ``power_iterations`` steps per training forward and frozen in
      eval (torch.nn.utils.parametrizations.spectral_norm, then a scale by beta). After
      training the parameterisation is folded into plain weights, so the saved checkpoint is an
      ordinary model. ``exact_fold = true`` (default) folds with the exact largest singular
      value, so every folded layer's norm is beta: the code folds with the last power-iteration
      estimate, which lags the last optimizer step and underestimates sigma (a short CPU run
      measured 0.417 for beta 0.4), breaking the non-expansive bound the method is about;
      ``false`` reproduces the code.
    - BN: ``bn_affine_trainable = false`` is the code's ``--freeze-bn`` (the released NEFT
      script); statistics use the batch everywhere by default (the script passes neither
      ``--reuse-statistic`` nor ``--reuse-teacher-statistic``): ``bn_stats`` sets the fine-tuned
      blocks' (``"frozen"`` is --reuse-statistic), ``bn_stats_frozen_part`` those of the frozen
      part (``"frozen"`` is --reuse-teacher-statistic, which the plain TL baseline tl_from_at.sh sets).
    - ``head_init = "uniform01"`` (default): the code replaces the FC by torch.rand_like, i.e.
      U[0, 1) weights and bias (transfer_learning_trainer/mixins.py, reshape_teacher_fc_layer;
      the plain transfer baseline, tl_trainer.py, does the same: give it
      ``head_init = "uniform01"`` too). It is surprising but does not break the method (the spectral
      scaling sets the head's size), and it produced the published numbers, so it is the
      default; ``"default"`` is PyTorch's Linear init.

    Defaults: beta 0.4 (a CARTL teacher; 0.6 for a Madry-AT teacher), k 4, one power iteration,
    SGD lr 0.1, momentum 0.9, weight decay 5e-4 (also on W_orig, as the code), batch 128, 100
    epochs, x0.2 at epochs 40/70/90, one epoch of per-iteration linear warm-up (the code's),
    crop + flip (the code also rotates by up to 15 degrees, which rtk does not offer), natural
    cross-entropy unless ``[transfer.objective]`` names another."""

    epochs: int = option(100, min=0, max=100_000, help="passes over the training set (CARTL: 100)")
    optimizer: Literal["sgd", "adam", "adamw"] = option("sgd", help="optimizer (CARTL: SGD)")
    lr: float = option(0.1, min=0.0, help="learning rate (CARTL: 0.1)")
    weight_decay: float = option(5e-4, min=0.0, help="weight decay, also on the un-normalised weights (CARTL: 5e-4)")
    schedule: Literal["constant", "cosine", "multistep"] = option("multistep", help=(
        "learning-rate schedule after the warm-up"))
    milestones: list[float] = option(default_factory=lambda: [40.0, 70.0, 90.0], help=(
        "multistep: epochs at which the rate is multiplied by gamma (CARTL: 40, 70, 90)"))
    gamma: float = option(0.2, min=0.0, help="multistep decay factor (CARTL: 0.2)")
    augment: Literal["none", "crop", "flip", "crop-flip"] = option("crop-flip", help=(
        "batch augmentation (CARTL: crop + flip + rotation)"))
    warmup_epochs: float = option(1.0, min=0.0, help=(
        "linear warm-up of the learning rate over this many epochs, per iteration (CARTL: 1)"))
    k: int = option(4, min=1, help="blocks to fine-tune, counted from the output: 1 = the head alone")
    beta: float = option(0.4, min=0.0, help=(
        "spectral-norm bound of each re-parameterised layer (0.4 for a CARTL teacher, 0.6 for Madry-AT)"))
    convex_residual: bool = option(True, help=(
        "residual units among the last k blocks output 0.5*shortcut + 0.5*residual"))
    power_iterations: int = option(1, min=1, help="power-iteration steps per training forward")
    spectral_layers: Literal["code", "all"] = option("code", help=(
        "layers of the last k blocks that get the bound: code = CARTL's rule (each block's direct Conv2d/Linear"
        " children and the head: the WRN units' convs; on resnet18 the head alone) or all (every Conv2d/Linear)"))
    exact_fold: bool = option(True, help=(
        "fold with the exact spectral norm (true) or the last power-iteration estimate (false: the code)"))
    head_init: HeadInit = option("uniform01", help=HEAD_INIT_HELP)
    bn_affine_trainable: bool = option(False, help=(
        "train BN scales and shifts of the fine-tuned blocks (false: the code's --freeze-bn)"))
    bn_stats_frozen_part: BatchNormStats = option("batch", help=(
        "BN statistics in the frozen part: batch (train mode, the NEFT script) or frozen (the teacher's running"
        " statistics: --reuse-teacher-statistic, the plain TL baseline)"))


@rtk.hookimpl
def register_objectives(register):
    register("cartl-fdm", "rtk_plugins.cartl.fdm:FeatureDistanceMinimization", config=CARTLFDMConfig,
             summary="CARTL stage 1: PGD-AT + lam * feature distance at the input of block k from the output")


@rtk.hookimpl
def register_transfer_strategies(register):
    register("neft", "rtk_plugins.cartl.neft:NEFT", config=NEFTConfig, takes_objective=True,
             summary="CARTL stage 2: fine-tune the last k blocks with spectral norm beta and convex residuals")
