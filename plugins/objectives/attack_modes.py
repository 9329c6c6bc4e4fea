"""The BN/dropout modes in which pgd-at and trades craft their inner attack (``attack_mode``).

``"eval"``: every module in eval mode (BN running statistics used, never updated; no dropout).
``"train"``: the modes the training loop set for the outer loss, unchanged. For a source trained
from scratch that is train mode everywhere; under a transfer strategy it is train mode except the
layers the strategy froze (finetune ``bn_stats = "frozen"``, the frozen blocks of
retrain-last-k, NEFT's ``bn_stats_frozen_part = "frozen"``; rtk_plugins.transfer.batchnorm marks
them by putting them in eval mode after ``model.train()``), which stay in eval mode, so their
running statistics never move, as during the outer loss. Switching the whole model to train mode
would unfreeze them for every attack step.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


class KeepModes(nn.Module):
    """``model`` behind a wrapper whose ``train()`` / ``eval()`` change nothing, so an attack
    library that switches modes around every attack (torchattacks calls ``model.train()`` or
    ``model.eval()``, and ``eval()`` on every BatchNorm in its train mode) leaves each submodule
    in the mode it has. Its own ``training`` flag is False, so torchattacks takes its eval path,
    which only calls ``eval()`` on the wrapper."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = False

    def forward(self, x):
        return self.model(x)

    def train(self, mode: bool = True) -> "KeepModes":
        return self


@contextmanager
def attack_modes(model: nn.Module, attack_mode: str):
    """Within the block: every module in eval mode (``"eval"``) or the current modes (``"train"``);
    yields ``model`` behind KeepModes for attack libraries. Each submodule's mode is restored after."""
    previous = [(m, m.training) for m in model.modules()]
    if attack_mode == "eval":
        model.eval()
    elif attack_mode != "train":
        raise ValueError(f'attack_mode must be "eval" or "train", got {attack_mode!r}')
    try:
        yield KeepModes(model)
    finally:
        for module, mode in previous:
            module.training = mode
