"""Fine-tuning with an explicit BatchNorm policy: see rtk_plugins.transfer.FinetuneConfig."""
from __future__ import annotations

from rtk.stages.training import CrossEntropy, fit
from rtk.stages.strategy import set_trainable
from rtk_plugins.transfer.base import Strategy
from rtk_plugins.transfer.batchnorm import freeze_bn_affine, train_mode


class Finetune(Strategy):
    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        set_trainable(model, True)
        if cfg.reset_head or model.num_classes != data.num_classes:
            model.reset_head(data.num_classes, cfg.head_init)
        if not cfg.bn_affine_trainable:
            freeze_bn_affine(model)
        fit(model, data.train, objective or CrossEntropy(), cfg, ctx, description="fine-tune",
            set_mode=lambda m: train_mode(m, cfg.bn_stats))
        model.eval()
        return model
