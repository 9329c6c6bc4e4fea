"""Linear probe on a frozen source (Shafahi et al., arXiv:1905.08232, Eq. 2): on cached features, or with
the backbone's BatchNorm statistics re-estimated on the target (``frozen_bn_stats = "batch"``); see
rtk_plugins.transfer.LinearProbeConfig."""
from __future__ import annotations

from rtk_plugins.transfer.base import Strategy, refuse_objective
from rtk_plugins.transfer.heads import train_head_on_features, train_head_with_batch_statistics


class LinearProbe(Strategy):
    def transfer(self, model, data, ctx, objective=None):
        refuse_objective(objective, "linear-probe trains with natural cross-entropy only; drop [transfer.objective]"
                                    " or use retrain-last-k (k = 1) or finetune")
        cfg = self.config
        build = lambda: model.reset_head(data.num_classes, cfg.head_init)  # noqa: E731
        if cfg.frozen_bn_stats == "batch":
            train_head_with_batch_statistics(model, data, ctx, cfg, build, "linear probe")
        else:
            train_head_on_features(model, data, ctx, cfg, build, "linear probe")
        model.eval()
        return model
