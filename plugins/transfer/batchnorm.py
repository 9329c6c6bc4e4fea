"""The BatchNorm policy of rtk.config.BatchNormOptions, shared by the strategies that train part or
all of the source (finetune, retrain-last-k, lwf, CARTL's neft)."""
from __future__ import annotations

from torch import nn

from rtk.stages.strategy import set_trainable


def bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_stats(module: nn.Module) -> None:
    """Eval mode for every BatchNorm in ``module``: running statistics used, never updated."""
    for bn in bn_layers(module):
        bn.eval()


def freeze_bn_affine(module: nn.Module) -> None:
    """Keep the scales and shifts of every BatchNorm in ``module`` at their current values
    (``bn_affine_trainable = false``)."""
    for bn in bn_layers(module):
        set_trainable(bn, False)


def train_mode(module: nn.Module, bn_stats: str) -> None:
    """Train mode for ``module``, its BatchNorm layers in eval mode when ``bn_stats`` is "frozen"."""
    module.train()
    if bn_stats == "frozen":
        freeze_bn_stats(module)
