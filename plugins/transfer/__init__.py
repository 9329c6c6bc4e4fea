"""Built-in transfer strategies of Shafahi et al., "Adversarially robust transfer learning"
(ICLR 2020, arXiv:1905.08232): a linear probe and an MLP head on cached frozen features,
retraining the last k blocks, and fine-tuning with an explicit BatchNorm policy. The LwF-style
feature distillation of the same paper lives in rtk_plugins.lwf."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import rtk
from rtk.config import BatchNormOptions, HeadOptions, TrainConfig, option
from rtk.config.schema import BatchNormStats

# The study's final-layer path: Ethos-lab/transfer_learning_for_adversarial_robustness,
# certified/train_utils.py (freeze_layers: requires_grad = False on the frozen layers, which are left out of
# the optimizer) with certified/train_consistency.py (train(): model.train() at every epoch, so the BatchNorm
# layers of the frozen ResNet-50 use batch statistics and re-estimate their running statistics on the
# target's training images).
FROZEN_BN_STATS_HELP = (
    "BatchNorm statistics of the frozen layers: frozen (eval mode: the source's running statistics used and kept)"
    " or batch (train mode: batch statistics, running statistics re-estimated on the target's training images"
    " while the weights stay frozen; dropout stays off), as the final-layer transfer of Vaishnavi et al., \"A study"
    " of the effects of transfer learning on adversarial robustness\" (TMLR 2024) does: its code,"
    " Ethos-lab/transfer_learning_for_adversarial_robustness, calls model.train() over the frozen body"
    " (certified/train_consistency.py)")


@dataclass
class CachedFeatureOptions:
    """A head trained on the features of the un-augmented training set, computed once: the batch size of
    that pass, and no batch augmentation."""

    strategy: ClassVar[str]  # the registered name, for the error below
    feature_batch_size: int = option(512, min=1, help="batch size of the one feature-extraction pass")

    def caches_features(self) -> bool:
        """Whether the features are cached once: always, unless the strategy has ``frozen_bn_stats = "batch"``."""
        return getattr(self, "frozen_bn_stats", "frozen") == "frozen"

    def __post_init__(self):
        if self.augment != "none" and self.caches_features():
            raise ValueError(f"augment: {self.strategy} trains on features cached once, so batch augmentation cannot"
                             ' apply; set augment = "none", or use retrain-last-k or finetune to train on augmented'
                             " images" + ('' if self.strategy != "linear-probe" else
                                          ' (or frozen_bn_stats = "batch", which runs the backbone at every step)'))


@dataclass
class LinearProbeConfig(HeadOptions, CachedFeatureOptions, TrainConfig):
    """Linear probe on a frozen source (Shafahi et al., "Adversarially robust transfer
    learning", arXiv:1905.08232, Eq. 2): a fresh linear head is trained on the penultimate
    features of the frozen backbone with the optimizer, weight decay and schedule options below,
    on features cached once with the source's BatchNorm statistics (default), or, with
    ``frozen_bn_stats = "batch"``, at every step with the backbone's BatchNorm statistics
    re-estimated on the target, as the study of Vaishnavi et al. (TMLR 2024) does.

    ``frozen_bn_stats = "frozen"`` (default): the backbone runs once in eval mode to cache the
    features of the un-augmented training set (for a dataset that augments as it reads, its
    ``unaugmented`` view), and the head trains on the cache. ``"batch"``: the policy of the
    final-layer transfer of Vaishnavi, Eykholt and Rahmati, "A study of the effects of transfer
    learning on adversarial robustness" (TMLR 2024, openreview.net/forum?id=T6RygOFZ6B; code:
    Ethos-lab/transfer_learning_for_adversarial_robustness, certified/train_utils.py freeze_layers
    with certified/train_consistency.py train, which calls model.train() every epoch): no cache;
    every step runs the backbone with its BatchNorm layers in train mode, so the head trains on
    batch-statistic features and the running statistics are re-estimated on the target's
    (augmented) training images, while every backbone weight stays frozen. ``augment`` then applies.

    Defaults: Adam, lr 1e-3, 20 epochs, batch 128, no weight decay, constant rate. The
    Table 2 code of Shafahi et al. (ashafahi/RobustTransferLWF, train.py of its first commit
    37d5248) uses Adam at lr 1e-3 with weight decay 2e-4 on the weight only
    (``weight_decay = 2e-4``, ``decay_bias_and_norm = false``,
    ``head_init = "uniform-unit-scaling"``) and crop-flip augmentation, which cached features
    cannot reproduce; the ImageNet sources (the paper's App. A.2) use 50 epochs, lr 0.01, 0.001
    from epoch 30 (``optimizer = "sgd"``, ``schedule = "multistep"``, ``milestones = [30]``)."""

    strategy: ClassVar[str] = "linear-probe"
    epochs: int = option(20, min=0, max=100_000, help=(
        'passes over the training set (its cached features, unless frozen_bn_stats = "batch")'))
    frozen_bn_stats: BatchNormStats = option("frozen", help=FROZEN_BN_STATS_HELP)


@dataclass
class RetrainLastKConfig(HeadOptions, BatchNormOptions, TrainConfig):
    """Retrain the last k blocks (Shafahi et al., "Adversarially robust transfer learning",
    arXiv:1905.08232, Sec. 3, Fig. 1/2): re-initialise the k deepest blocks (counted from the
    output, k = 1 is the head alone, as rtk.models counts; Madry's WRN-32-10 has 17 blocks) and
    train only them on the target, all earlier layers frozen and kept in eval mode (their BN
    statistics are neither used from the batch nor updated, unless ``frozen_bn_stats = "batch"``).
    Trains with the recipe's objective (its ``transfer.objective`` table) when given, else natural
    cross-entropy.

    Defaults follow Sec. 3: momentum SGD (0.9), lr 1e-3, pad-4 crop + flip, batch 128 (not
    stated in the paper: training_batch_size in config.json of ashafahi/RobustTransferLWF), 51
    epochs (about the paper's 20,000 iterations of 128 CIFAR images), no weight decay (not
    stated). How the paper ran BN in the re-initialised blocks is not stated: ``bn_stats =
    "batch"`` (batch statistics, running statistics updated) by default, ``"frozen"`` keeps the
    blocks' BN in eval mode (with ``reinit`` that means the freshly reset statistics, mean 0 and
    variance 1). BN in the earlier, frozen layers keeps the source's statistics by default
    (``frozen_bn_stats = "frozen"``); ``"batch"`` re-estimates them on the target, weights frozen,
    as the final-layer transfer of Vaishnavi et al., "A study of the effects of transfer learning
    on adversarial robustness" (TMLR 2024, openreview.net/forum?id=T6RygOFZ6B) does (its code,
    Ethos-lab/transfer_learning_for_adversarial_robustness, certified/train_consistency.py, calls
    model.train() every epoch). ``bn_affine_trainable = false`` keeps the BN scales and shifts of
    the retrained blocks fixed, as the plain-transfer baseline of CARTL (Chen et al., "CARTL:
    Cooperative Adversarially-Robust Transfer Learning", arXiv:2106.06667; NISP-official/CARTL,
    its --freeze-bn flag) does."""

    epochs: int = option(51, min=0, max=100_000, help=(
        "passes over the training set (51 x 391 steps ~ the paper's 20,000 iterations on CIFAR)"))
    optimizer: Literal["sgd", "adam", "adamw"] = option("sgd", help="optimizer (Sec. 3: momentum SGD)")
    lr: float = option(1e-3, min=0.0, help="learning rate (Sec. 3: 0.001)")
    augment: Literal["none", "crop", "flip", "crop-flip", "resized-crop-flip"] = option("crop-flip", help=(
        "batch augmentation (Sec. 3: standard pad-4 crop + flip)"))
    k: int = option(1, min=1, help="blocks to retrain, counted from the output: 1 = the head alone")
    reinit: bool = option(True, help=(
        "re-initialise the k blocks (reset_parameters of their layers; a fresh head) before training"))
    frozen_bn_stats: BatchNormStats = option("frozen", help=FROZEN_BN_STATS_HELP)


@dataclass
class MLPHeadConfig(CachedFeatureOptions, TrainConfig):
    """An MLP head on a frozen source (Shafahi et al., "Adversarially robust transfer
    learning", arXiv:1905.08232, Sec. 4.2.1, Fig. 4): the backbone runs once in eval mode to
    cache the features of the un-augmented training set; a head of ``hidden_layers`` x
    (Linear -> BatchNorm (optional) -> ReLU -> Dropout (optional)) and a final Linear replaces
    ``model.head`` and is trained on the cache.

    Defaults: one hidden layer of 2048 units (the paper's width; it reports 0, 1, 2, 3 and 5
    layers), no BN, no dropout (the paper's "+DO" variant uses ``dropout = 0.25``, "+BN"
    ``batchnorm = true``; the layer order is not stated). The paper gives no training
    hyper-parameters for this experiment, so the App. A.2 ones are used: 50 epochs, batch
    128, SGD momentum 0.9, lr 0.01, x0.1 at epoch 30 (the optimizer is not stated either)."""

    strategy: ClassVar[str] = "mlp-head"
    epochs: int = option(50, min=0, max=100_000, help="passes over the cached features (App. A.2: 50)")
    optimizer: Literal["sgd", "adam", "adamw"] = option("sgd", help="optimizer (not stated; SGD momentum 0.9 assumed)")
    lr: float = option(0.01, min=0.0, help="learning rate (App. A.2: 0.01)")
    schedule: Literal["constant", "cosine", "multistep"] = option("multistep", help=(
        "learning-rate schedule (App. A.2: x0.1 at epoch 30)"))
    milestones: list[float] = option(default_factory=lambda: [30.0], help=(
        "multistep: epochs at which the rate is multiplied by gamma"))
    hidden_layers: int = option(1, min=0, help="hidden layers before the output Linear (0 = a linear head)")
    width: int = option(2048, min=1, help="units of every hidden layer (the paper: 2048)")
    batchnorm: bool = option(False, help="BatchNorm1d after each hidden Linear (the paper's +BN)")
    dropout: float = option(0.0, min=0.0, max=0.99, help="dropout after each hidden ReLU (the paper's +DO uses 0.25)")


@dataclass
class FinetuneConfig(HeadOptions, BatchNormOptions, TrainConfig):
    """Fine-tune the whole source model on the target with the recipe's objective (its
    ``transfer.objective`` table; natural by default), with the BatchNorm policy explicit: the
    baseline Shafahi et al. ("Adversarially robust transfer learning", arXiv:1905.08232)
    compare against, and the starting point of CARTL and RoLI.

    Defaults: Adam, lr 1e-3, 10 epochs, batch 128, a fresh head, BN affine parameters trained
    and batch statistics used (running statistics updated). CARTL's ``--freeze-bn``
    (NISP-official/CARTL; Chen et al., arXiv:2106.06667) is ``bn_affine_trainable = false`` with
    ``bn_stats = "batch"``; Shafahi et al.'s TF code (ashafahi/RobustTransferLWF,
    train_with_LWF.py: the model built with mode "eval") keeps the statistics frozen and trains
    the affine parameters (``bn_stats = "frozen"``)."""

    reset_head: bool = option(True, help="replace the head with a fresh one sized for the target classes")


@rtk.hookimpl
def register_transfer_strategies(register):
    register("linear-probe", "rtk_plugins.transfer.probe:LinearProbe", config=LinearProbeConfig,
             takes_objective=False, summary="Frozen source, features cached once (or BN re-estimated per step),"
                                            " fresh linear head trained on them")
    register("retrain-last-k", "rtk_plugins.transfer.retrain_last_k:RetrainLastK", config=RetrainLastKConfig,
             takes_objective=True,
             summary="Re-initialise and retrain the last k blocks, earlier layers frozen in eval mode"
                     " (Shafahi et al. Sec. 3)")
    register("mlp-head", "rtk_plugins.transfer.mlp_head:MLPHead", config=MLPHeadConfig, takes_objective=False,
             summary="Frozen source, features cached once, an MLP head trained on them (Shafahi et al. Sec. 4.2.1)")
    register("finetune", "rtk_plugins.transfer.finetune:Finetune", config=FinetuneConfig, takes_objective=True,
             summary="Fine-tune all weights with an objective, BatchNorm policy explicit")
