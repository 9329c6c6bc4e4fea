"""Linear probe on cached features (Shafahi et al., arXiv:1905.08232, Eq. 2)."""
from __future__ import annotations

from rtk.stages.training import CrossEntropy, fit
from rtk.stages.strategy import TransferStrategy, compute_features, set_trainable


class LinearProbe(TransferStrategy):
    def __init__(self, config):
        self.config = config

    def transfer(self, model, data, ctx, objective=None):
        if objective is not None:
            from rtk.errors import RtkError

            raise RtkError("[transfer.objective]: linear-probe trains on cached clean features, so only natural training applies; drop [transfer.objective] or use finetune")
        model.eval()
        set_trainable(model, False)
        features = compute_features(model, data.train, ctx, self.config.feature_batch_size, "features (train)")
        head = model.reset_head(data.num_classes, self.config.head_init)
        fit(head, features, CrossEntropy(), self.config, ctx, description="linear probe")
        model.eval()
        return model
