"""timm backbones as source models: ``timm/<name>`` for any ``timm.list_models()`` name.

Wightman, "PyTorch Image Models" (github.com/huggingface/pytorch-image-models). Any timm
architecture, optionally with a pretrained tag (``timm/resnet50.a1_in1k``), wrapped in the
model contract by rtk_plugins.timm_models.timm_wrap: resize + normalization inside the model
(defaults from the model's pretrained_cfg), features = the classifier's input, blocks from
timm's layer grouping. Defaults: random init, 3 input channels, the pretrained_cfg input size
(224 for most ImageNet models, so CIFAR images are upsampled as in Shafahi et al. A.2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rtk
from rtk.config import option


@dataclass
class TimmConfig:
    """Options of a timm backbone."""

    pretrained: bool = option(False, help=(
        "load the pretrained weights of the name's tag from the local"
        " Hugging Face cache or the hub (needs network unless cached)"))
    timm_weights: str | None = option(None, path=True, help=(
        "local timm-format weights file (a timm state dict as timm or the hub ship it: .safetensors, or a"
        " tensor-only torch file); implies pretrained. [source] weights instead takes a checkpoint rtk wrote"))
    input_size: int | None = option(None, min=1, help=(
        "images are resized to this size inside the model; default: the pretrained_cfg input size"))
    mean: list[float] | None = option(None, help=(
        "per-channel normalization mean inside the model; default: the pretrained_cfg mean"))
    std: list[float] | None = option(None, help=(
        "per-channel normalization std inside the model; default: the pretrained_cfg std"))
    in_chans: int = option(3, min=1, help="image channels (timm adapts the stem of pretrained weights)")
    model_args: dict[str, Any] = option(default_factory=dict, help=(
        "extra keyword arguments for timm.create_model, e.g. {drop_path_rate = 0.1}"))

    def __post_init__(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both mean and std, or neither (both then come from the pretrained_cfg)")
        if self.mean is not None and (len(self.mean) != self.in_chans or len(self.std) != self.in_chans):
            raise ValueError(f"mean and std need one entry per channel (in_chans = {self.in_chans})")


@rtk.hookimpl
def register_source_models(register):
    register("timm/*", "rtk_plugins.timm_models.timm_wrap:from_config", config=TimmConfig,
             summary="Any timm model, e.g. timm/resnet50 or timm/vit_base_patch16_224.augreg_in21k"
                     " (local weights or HF cache)")
