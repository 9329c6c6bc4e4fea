"""Built-in training objectives: natural cross-entropy, PGD adversarial training (Madry), free
adversarial training (Shafahi), TRADES (Zhang) and SimCLR (Chen)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import option


@dataclass
class NaturalConfig:
    """Natural training: mean cross-entropy on clean images (no options)."""


@dataclass
class PGDATConfig:
    """PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", arXiv:1706.06083): min over weights of the cross-entropy at the PGD
    point (torchattacks' PGD / PGDL2: random start in the ball, steps of size alpha, projection,
    clip to [0, 1]).

    Defaults: the CIFAR recipe, Linf eps 8/255, 7 steps, alpha unset = eps/4 (2/255 at the
    default eps), random start. Unset alpha with L2 is 2.5*eps/steps (the robustness library's
    rule). The setting of "A Study of the Effects of Transfer Learning on Adversarial
    Robustness" (Vaishnavi, Eykholt, Rahmati, TMLR 2024; Ethos-lab code, empirical/
    pre_training.sh) is ``norm = "L2"``, ``eps = 0.5``, ``steps = 3``, ``alpha = "1/3"``
    (2*eps/3; set it, since unset gives 2.5*eps/3), ``random_start = true``.

    BN mode of the inner attack: ``attack_mode = "eval"`` (default) crafts the attack with BN
    running statistics and no dropout, as the PyTorch ports do (NISP-official/CARTL
    src/trainer/adv_trainer.py, yaodongyu/TRADES trades.py); ``"train"`` crafts it in the modes
    of the outer loss, as Madry's TF code does (MadryLab/cifar10_challenge train.py: one graph,
    batch statistics, running statistics updated by every attack step). Those modes are the
    ones the training loop set: train mode for a source, and under a transfer strategy train mode
    except the BN layers it froze (finetune ``bn_stats = "frozen"``, the frozen blocks of
    retrain-last-k, NEFT's ``bn_stats_frozen_part = "frozen"``), which stay in eval mode through
    the attack too: their running statistics never move. The outer loss is computed in those
    modes."""

    norm: Literal["Linf", "L2"] = option("Linf", help="threat model norm")
    eps: float = option(8 / 255, min=0.0, help="training radius in [0, 1] pixel units")
    steps: int = option(7, min=1, help="inner PGD steps")
    alpha: float | None = option(None, min=0.0, help=(
        "inner step size (unset: eps/4 for Linf, i.e. 2/255 at eps 8/255; 2.5*eps/steps for L2)"))
    random_start: bool = option(True, help="inner attack starts uniformly at random in the ball")
    attack_mode: Literal["eval", "train"] = option("eval", help=(
        "BN/dropout mode while crafting the inner attack: eval, or train = the outer loss's modes (BN layers a"
        " strategy froze stay frozen; the others use and update batch statistics)"))
    eps_ramp: float = option(0.0, min=0.0, max=1.0, help=(
        "fraction of training over which eps (and the step) grow linearly from 0 to eps"))
    mix_clean: float = option(0.0, min=0.0, max=1.0, help=(
        "weight of the clean-image loss (0 = pure adversarial training)"))


@dataclass
class FreeATConfig:
    """Free adversarial training (Shafahi et al., "Adversarial Training for Free!",
    arXiv:1904.12843; code mahyarnajibi/FreeAdversarialTraining main_free.py). Each minibatch is
    replayed ``replays`` (m) times; each replay is ONE forward/backward at clip(x + delta, 0, 1)
    that gives the weight gradient (an optimizer step) and the gradient g of delta, then
    delta <- clip(delta + step * sign(g), -eps, eps). delta has the shape of the largest batch,
    starts at zero and is never reset between minibatches or epochs (a smaller last batch uses
    its first rows); it is saved in training checkpoints, so a resumed run continues with it.
    The model is in train mode throughout (there is no separate attack).

    Defaults: Linf eps 8/255, m = 8, step = eps (the code's ``fgsm_step`` = eps). Only Linf.

    Epochs: ``[source.train] epochs`` counts passes over distinct minibatches, each giving m
    optimizer steps, and the learning-rate schedule counts optimizer steps. The papers divide
    the epoch budget by m so that the total number of steps matches natural training: CIFAR
    (the paper, Sec. 4; TF code ashafahi/free_adv_train): m = 8, 205 "epochs" of replayed
    minibatches = ceil(205/8) = 26 distinct epochs (eps 8, step 8 on the [0, 255] scale);
    ImageNet (mahyarnajibi/FreeAdversarialTraining configs.yml, main_free.py:47,
    lib/utils.py adjust_learning_rate): m = 4, eps 4/255, step 4/255, 90 epochs of which each
    batch is replayed m times, i.e. ``epochs = ceil(90/m)`` (23 for m = 4), the lr divided by 10
    every ceil(30/m) epochs (milestones 8, 16 for m = 4)."""

    eps: float = option(8 / 255, min=0.0, help="Linf radius in [0, 1] pixel units")
    replays: int = option(8, min=1, max=1000, help="m: optimizer steps (and perturbation updates) per minibatch")
    step: float | None = option(None, min=0.0, help="perturbation step size (unset: eps, as the reference code)")
    norm: Literal["Linf"] = option("Linf", help="threat model norm (free-at is defined for Linf sign steps only)")


@dataclass
class TRADESConfig:
    """TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and
    Accuracy", arXiv:1901.08573; code yaodongyu/TRADES trades.py):
    loss = CE(f(x), y) + beta * (1/B) * sum_i KL(softmax f(x_i) || softmax f(x'_i)), the clean
    softmax NOT detached. x' maximises that KL in the eps ball: start x + 0.001 N(0, 1), ``steps``
    sign steps of ``alpha`` (Linf), projection, clip to [0, 1]. L2 follows the code's l_2
    branch: normalised-gradient steps of ``alpha`` (the code uses 2*eps/steps; set it), clip,
    renorm to eps. The clean forward is computed once in train mode and used in both terms (the
    code runs it twice, which only updates BN running statistics a second time).

    Defaults: the CIFAR-10 recipe, beta 6, Linf eps 0.031, 10 steps of 0.007, attack in eval
    mode as the code (``attack_mode = "train"`` crafts x' in the outer loss's modes: batch
    statistics, except in BN layers a transfer strategy froze, which stay frozen). Paper
    schedule: SGD lr 0.1 (x0.1 at epoch 75), 76 epochs, weight decay 2e-4, batch 128."""

    beta: float = option(6.0, min=0.0, help="weight of the KL robustness term (0: natural training)")
    eps: float = option(0.031, min=0.0, help="radius of the inner maximisation in [0, 1] pixel units")
    steps: int = option(10, min=0, help="inner steps (0: x' is x plus the 0.001-scale Gaussian start)")
    alpha: float = option(0.007, min=0.0, help="inner step size")
    norm: Literal["Linf", "L2"] = option("Linf", help="threat model norm")
    attack_mode: Literal["eval", "train"] = option("eval", help=(
        "BN/dropout mode while crafting x': eval, or train = the outer loss's modes (BN layers a strategy"
        " froze stay frozen; the others use and update batch statistics)"))


@dataclass
class SimCLRConfig:
    """SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", arXiv:2002.05709; loss as google-research/simclr objective.py).

    Self-supervised: labels are ignored. Each image gets two independent views (random resized
    crop + flip, colour jitter with p 0.8, grayscale, optional blur; per-image parameters,
    batched on the device, drawn from torch's global RNG). z = g(model.features(view)) with a
    projection MLP g = Linear -> ReLU -> Linear owned by this objective: it is trained with the
    model and saved in training checkpoints, but it is NOT part of the model, so its weights
    file and every transfer see only the encoder (and a head the loss never trains). NT-Xent
    with cosine similarity and temperature tau, computed as the reference does: the sum of the
    view-1-anchor mean and the view-2-anchor mean (twice the paper's 1/2N form), self-similarity
    masked with -1e9.

    Defaults: tau 0.5 (the CIFAR value; 0.1 for ImageNet), projection 128-d, hidden width =
    the model's feature_dim, crop area in [0.08, 1], colour strength s 0.5 (CIFAR; 1.0 for
    ImageNet), grayscale p 0.2, no blur (the CIFAR recipe; ImageNet uses blur). Set
    ``[source.train] augment = "none"``: the views already crop and flip. The paper trains with
    LARS and very large batches (CIFAR: batch 1024+, 500+ epochs); small batches give fewer
    negatives."""

    temperature: float = option(0.5, min=1e-6, help="NT-Xent temperature tau (0.5 CIFAR, 0.1 ImageNet)")
    projection_dim: int = option(128, min=1, help="output width of the projection head g")
    projection_hidden: int | None = option(None, min=1, help="hidden width of g (unset: the model's feature_dim)")
    crop_scale_min: float = option(0.08, min=0.0, max=1.0, help="smallest crop area as a fraction of the image")
    color_jitter: float = option(0.5, min=0.0, help=(
        "colour distortion strength s (brightness/contrast/saturation 0.8s, hue 0.2s; 0: off)"))
    grayscale_p: float = option(0.2, min=0.0, max=1.0, help="probability of converting a view to grayscale (RGB only)")
    blur: bool = option(False, help=(
        "Gaussian blur with p 0.5, sigma in [0.1, 2], kernel 10% of the image side (ImageNet recipe)"))

    def __post_init__(self):
        if self.crop_scale_min <= 0:
            raise ValueError("crop_scale_min must be above 0 (a crop needs some area); SimCLR uses 0.08")


@rtk.hookimpl
def register_objectives(register):
    register("natural", "rtk_plugins.objectives.natural:natural", config=NaturalConfig,
             summary="Natural training: cross-entropy on clean images")
    register("pgd-at", "rtk_plugins.objectives.adversarial_training:PGDAdversarialTraining", config=PGDATConfig,
             summary="Madry PGD adversarial training (Linf or L2), optional eps ramp")
    register("free-at", "rtk_plugins.objectives.free_at:FreeAdversarialTraining", config=FreeATConfig,
             summary="Free adversarial training (Shafahi 2019): m replays per batch, persistent Linf perturbation")
    register("trades", "rtk_plugins.objectives.trades:TRADES", config=TRADESConfig,
             summary="TRADES (Zhang 2019): CE + beta * KL to the inner-maximised point")
    register("simclr", "rtk_plugins.objectives.simclr:SimCLR", config=SimCLRConfig,
             summary="SimCLR (Chen 2020) self-supervised NT-Xent with an objective-owned projection head")
