"""Fine-tuning with an explicit BatchNorm policy (FinetuneConfig), and the BN helpers the other
transfer strategies share."""
from __future__ import annotations

from torch import nn

from rtk.stages.training import CrossEntropy, fit
from rtk.stages.strategy import TransferStrategy, set_trainable


def bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_stats(module: nn.Module) -> None:
    """Eval mode for every BatchNorm in ``module``: running statistics used, never updated."""
    for bn in bn_layers(module):
        bn.eval()


class Finetune(TransferStrategy):
    def __init__(self, config):
        self.config = config

    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        set_trainable(model, True)
        if cfg.reset_head or model.num_classes != data.num_classes:
            model.reset_head(data.num_classes, cfg.head_init)
        if not cfg.bn_affine_trainable:
            for bn in bn_layers(model):
                set_trainable(bn, False)

        def set_mode(m):
            m.train()
            if cfg.bn_stats == "frozen":
                freeze_bn_stats(m)

        fit(model, data.train, objective or CrossEntropy(), cfg, ctx, description="fine-tune", set_mode=set_mode)
        model.eval()
        return model
