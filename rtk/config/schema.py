"""Every config of the core and the option sets components share, in one torch-free module (so
that listing plugins and validating recipes stay fast); each default is written once, here.

- ``RunConfig`` ([run]), ``EvalConfig`` ([eval]), ``TrainConfig`` ([source.train], and every
  strategy that trains weights subclasses it), ``DatasetConfig`` (every dataset subclasses it);
- ``HeadOptions`` and ``BatchNormOptions``: the one vocabulary of the strategies that put a fresh
  head on the source or choose what its BatchNorm layers do. A strategy mixes them in and may
  override a default (``head_init: HeadInit = option("uniform01", help=HEAD_INIT_HELP)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rtk.config.fields import option


@dataclass
class DatasetConfig:
    """Options shared by every dataset, applied by rtk.data.apply_options to what the dataset returns. Defaults:
    every class, remap = true, every training example, no validation split, seed = 0, and images at their stored
    size and channels (image_size and channels unset)."""

    # True where the factory brings images to image_size itself (a crop that keeps the aspect ratio, as
    # imagefolder and the study's datasets do): rtk then applies only channels, never a second resize.
    resizes_itself: ClassVar[bool] = False

    classes: list[int] | None = option(None, help="keep only these classes (original label ids), e.g. [5, 6, 7, 8, 9]")
    remap: bool = option(True, help=(
        "relabel the kept classes 0..k-1 in the order listed (false keeps the original ids and class count, as split "
        "CIFAR-100 does)"))
    per_class: int | None = option(None, min=1, help="keep N training examples per class (seeded): low-data regimes")
    val_fraction: float = option(0.0, min=0.0, max=0.9, help=(
        "hold out this fraction of the training set as a validation split (stratified, seeded)"))
    seed: int = option(0, min=0, max=2**31 - 1, help=(
        "seed of the per_class and validation draws (independent of the run seed, so every run sees the same subset)"))
    # Added after sources were stored: in the key only when set (rtk.config.fields.option), so stored keys stay.
    image_size: int | None = option(None, min=1, max=4096, key="if-set", help=(
        "resize every image to image_size x image_size (bilinear, antialiased when shrinking) as it is read, so"
        " attacks and smoothing noise act at that size (e.g. 224 for an ImageNet model, 32 for a CIFAR one); unset"
        " keeps the stored size. Datasets that must crop to a fixed size say so in their own help"))
    channels: Literal[1, 3] | None = option(None, key="if-set", help=(
        '1 or 3: grayscale repeated to 3 channels (RGB models), or RGB to 1 by the ITU-R 601-2 luma weights'
        ' 0.299 R + 0.587 G + 0.114 B (as PIL\'s "L"), as images are read; unset keeps the stored channels'))


@dataclass
class TrainConfig:
    """Optimisation options shared by source training and the strategies that train weights."""

    epochs: int = option(10, min=0, max=100_000, help="passes over the training set")
    batch_size: int = option(128, min=1, max=1_000_000, help="examples per step")
    optimizer: Literal["sgd", "adam", "adamw"] = option("adam", help="optimizer")
    lr: float = option(1e-3, min=0.0, help="learning rate")
    momentum: float = option(0.9, min=0.0, max=1.0, help="SGD momentum")
    weight_decay: float = option(0.0, min=0.0, help="L2 weight decay (coupled for sgd/adam, decoupled for adamw)")
    decay_bias_and_norm: bool = option(True, help=(
        "apply weight_decay to biases and normalization parameters too (false: only to conv/linear weights, as TF "
        "codes that decay the DW variables do)"))
    schedule: Literal["constant", "cosine", "multistep"] = option("constant", help=(
        "learning-rate schedule, stepped per iteration"))
    milestones: list[float] = option(default_factory=list, help=(
        "multistep: epochs at which the rate is multiplied by gamma"))
    gamma: float = option(0.1, min=0.0, help="multistep decay factor")
    warmup_epochs: float = option(0.0, min=0.0, help=(
        "linear learning-rate warm-up over this many epochs, per step, before the schedule"))
    adam_eps: float = option(1e-8, min=0.0, help="Adam/AdamW epsilon")
    adam_betas: list[float] = option(default_factory=lambda: [0.9, 0.999], help="Adam/AdamW betas")
    augment: Literal["none", "crop", "flip", "crop-flip", "resized-crop-flip"] = option("none", help=(
        "batch augmentation (crop-flip = pad-4 random crop + horizontal flip; resized-crop-flip = ImageNet-style"
        " RandomResizedCrop, scale 0.08-1, ratio 3/4-4/3, back to the input size, + flip)"))
    checkpoint_every: int = option(0, min=0, key=False, help=(
        "also save a resumable training checkpoint every N steps (0: at the end of every epoch only)"))


@dataclass
class RunConfig:
    """[run]: the run as a whole."""

    name: str = option("rtk-run", help="name of the run (default output folder runs/NAME/...)")
    seed: int = option(0, min=0, max=2**31 - 1, help="seed of every random stream of the run (CPU runs repeat exactly)")
    seeds: list[int] | None = option(None, help=(
        "repeat every sweep point once per seed (sources trained here too; rtk run --seeds 0,1,2): the table and"
        " results.json give mean, std and 95% intervals over them; unset: the one seed above"))
    log_every: int = option(100, min=0, help=(
        "metrics.jsonl: besides every epoch, record the running loss every N optimizer steps of epochs longer than"
        " N steps (0: per epoch only)"))
    curve_examples: int = option(512, min=0, help=(
        "metrics.jsonl: clean accuracy after every epoch on this many training examples (the first ones, eval mode;"
        " on the validation split when the strategy measures one); 0: not measured"))
    device: str = option("auto", help=(
        '"auto" (CUDA when available), "cpu", "cuda" or "cuda:N" (under torchrun "auto" and "cuda" mean '
        'cuda:LOCAL_RANK)'))
    # Fast paths. Those that can change numbers are off by default; evaluation and certification
    # stay in float32 unless eval_amp says otherwise.
    amp: Literal["off", "bf16"] = option("off", help=(
        '"bf16": bf16 autocast in training (source and transfer); changes training numbers. Allowed on CPU too '
        '(torch\'s CPU autocast), where it is rarely faster'))
    eval_amp: Literal["off", "bf16"] = option("off", help=(
        '"bf16": bf16 autocast also in evaluation, attacks, feature extraction and certification; changes evaluation '
        'numbers, so off by default'))
    channels_last: bool = option(False, help=(
        "channels_last memory format for the model's weights and image batches (faster convolutions on tensor-core "
        "GPUs; may change the last bits of results)"))
    compile: bool = option(False, help=(
        "torch.compile the model's forward (nn.Module.compile): slow first batches, then faster; may change the last "
        "bits of results"))
    workers: int = option(0, min=0, max=256, help=(
        "DataLoader worker processes for file-backed datasets (in-memory datasets are sliced in the main process, "
        "which is faster)"))
    pin_memory: bool = option(False, help="pin host batches before copying them to a CUDA device (no effect on CPU)")
    non_blocking: bool = option(True, help=(
        "copy batches to a CUDA device asynchronously (no effect on CPU; does not change results)"))
    feature_cache_mb: float | None = option(2048.0, min=0.0, help=(
        "cached features (linear probes, LwF) larger than this many MiB are written to a memory-mapped file in the "
        "run folder's feature-cache/ instead of memory; unset: always in memory"))


@dataclass
class EvalConfig:
    """[eval]: how the transferred model is evaluated (attacks are [[eval.attacks]] tables)."""

    batch_size: int = option(256, min=1, max=1_000_000, help="examples per attack batch")
    n: int | None = option(None, min=1, help="evaluate on n test examples (all when unset)")
    subset: Literal["first", "random", "stride"] = option("first", help=(
        "which n examples: the first n, a seeded random draw, or n evenly spaced over the whole test set"))
    subset_seed: int = option(0, min=-2**63, max=2**64 - 1, help="seed of the random subset")
    attack_order: Literal["independent", "sequential"] = option("independent", help=(
        '"independent": every clean-correct example meets every attack, so each attack column is that attack\'s own '
        'accuracy (papers\' side-by-side columns); "sequential": an attack only sees the examples the earlier ones '
        'failed on (cheaper, AutoAttack-style), so the columns are cumulative. robust is the per-example worst case '
        'either way'))
    per_class: bool = option(False, help=(
        'add clean, per-attack and robust accuracy of every class to the results ("per_class")'))
    sanity: bool = option(True, help=(
        "run the sanity checks (randomness in the forward pass, zero gradients, black-box beating white-box, "
        "accuracy rising with more steps or larger eps) and report their flags"))
    sanity_n: int = option(100, min=0, help=(
        "how many of the evaluated examples (the first ones) the sanity checks use; 0 turns them off"))


HeadInit = Literal["default", "zeros", "uniform-unit-scaling", "uniform01"]
HEAD_INIT_HELP = ("initialisation of the fresh head: default (PyTorch's Linear init), zeros, uniform-unit-scaling"
                  " (TF's init, as Shafahi et al.'s code) or uniform01 (U[0, 1) weights and bias, as CARTL's trainer)")
BatchNormStats = Literal["batch", "frozen"]
BN_STATS_HELP = ("BatchNorm statistics of the layers the strategy trains: batch (train mode: batch statistics, running"
                 " statistics updated) or frozen (eval mode: the source's running statistics used and kept)")


@dataclass
class HeadOptions:
    """The fresh classification head a strategy puts on the source."""

    head_init: HeadInit = option("default", help=HEAD_INIT_HELP)


@dataclass
class BatchNormOptions:
    """What the BatchNorm layers of the trained part of the model do (layers a strategy freezes stay
    in eval mode whatever these say)."""

    bn_stats: BatchNormStats = option("batch", help=BN_STATS_HELP)
    bn_affine_trainable: bool = option(True, help="train the BatchNorm scales and shifts (false: keep the source's)")
