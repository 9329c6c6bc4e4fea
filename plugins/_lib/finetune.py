"""Fine-tuning with an explicit BatchNorm policy."""
from __future__ import annotations

from torch import nn

from rtk.training import CrossEntropy, fit
from rtk.transfer import TransferStrategy, set_trainable


def bn_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def apply_bn_policy(model: nn.Module, policy: str) -> None:
    """Set BN modes and trainability for ``policy`` (see FinetuneConfig.bn)."""
    for bn in bn_layers(model):
        if policy in ("frozen-stats", "frozen"):
            bn.eval()
        if policy == "frozen":
            set_trainable(bn, False)


class Finetune(TransferStrategy):
    def __init__(self, config):
        self.config = config

    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        set_trainable(model, True)
        if cfg.reset_head or model.num_classes != data.num_classes:
            model.reset_head(data.num_classes, cfg.head_init)
        apply_bn_policy(model, cfg.bn)

        def set_mode(m):
            m.train()
            apply_bn_policy(m, cfg.bn)

        fit(model, data.train, objective or CrossEntropy(), cfg, ctx, description="fine-tune", set_mode=set_mode)
        model.eval()
        return model
