"""Retrain the last k blocks (Shafahi et al., "Adversarially robust transfer learning",
arXiv:1905.08232, Sec. 3): see rtk_plugins.transfer.RetrainLastKConfig."""
from __future__ import annotations

from torch import nn

from rtk.errors import RtkError
from rtk.stages.training import CrossEntropy, fit
from rtk.stages.strategy import set_trainable
from rtk_plugins.transfer.base import Strategy
from rtk_plugins.transfer.batchnorm import bn_layers, freeze_bn_affine, train_mode


def reinitialise(block: nn.Module, name: str) -> None:
    """reset_parameters() of every layer in ``block``; a parameter no layer resets is an error,
    since leaving it at its source value would silently break "re-initialise"."""
    reset = set()
    for module in block.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            reset.update(id(p) for p in module.parameters(recurse=False))
    left = [n for n, p in block.named_parameters() if id(p) not in reset]
    if left:
        raise RtkError(f"retrain-last-k: cannot re-initialise {name}: no reset_parameters() for {', '.join(left[:3])}"
                       f"{' ...' if len(left) > 3 else ''}; set reinit = false to retrain it from the source weights")


class RetrainLastK(Strategy):
    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        count = len(model.blocks)
        if cfg.k > count:
            raise RtkError(f"retrain-last-k: k = {cfg.k} but the model has {count} blocks (the head counts as one);"
                           f" choose k between 1 and {count}")
        set_trainable(model, False)
        if cfg.reinit or model.num_classes != data.num_classes:
            model.reset_head(data.num_classes, cfg.head_init)
        body_blocks = list(zip(model.block_names, model.blocks[:-1]))[count - cfg.k:]
        if cfg.reinit:
            for name, block in body_blocks:
                reinitialise(block, name)
        trained = [block for _, block in body_blocks] + [model.head]
        for block in trained:
            set_trainable(block, True)
            if not cfg.bn_affine_trainable:
                freeze_bn_affine(block)

        def set_mode(m):
            m.eval()  # the frozen layers: dropout off, BN with the source's statistics ...
            if cfg.frozen_bn_stats == "batch":  # ... or re-estimating them on the target, weights frozen
                for bn in bn_layers(m):
                    bn.train()
            for block in trained:
                train_mode(block, cfg.bn_stats)

        params = [p for block in trained for p in block.parameters()]
        fit(model, data.train, objective or CrossEntropy(), cfg, ctx, params=params,
            description=f"retrain last {cfg.k} blocks", set_mode=set_mode)
        model.eval()
        return model
