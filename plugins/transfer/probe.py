"""Linear probe on cached features (Shafahi et al., arXiv:1905.08232, Eq. 2)."""
from __future__ import annotations

from rtk_plugins.transfer.base import Strategy, refuse_objective
from rtk_plugins.transfer.heads import train_head_on_features


class LinearProbe(Strategy):
    def transfer(self, model, data, ctx, objective=None):
        refuse_objective(objective, "linear-probe trains on cached clean features, so only natural training applies;"
                                    " drop [transfer.objective] or use finetune")
        cfg = self.config
        train_head_on_features(model, data, ctx, cfg, lambda: model.reset_head(data.num_classes, cfg.head_init),
                               "linear probe")
        model.eval()
        return model
