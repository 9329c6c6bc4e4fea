"""An MLP head trained on cached frozen features (Shafahi et al., "Adversarially robust
transfer learning", arXiv:1905.08232, Sec. 4.2.1): see rtk_plugins.transfer.MLPHeadConfig."""
from __future__ import annotations

from torch import nn

from rtk.errors import RtkError
from rtk_plugins.transfer.base import Strategy, refuse_objective
from rtk_plugins.transfer.heads import train_head_on_features


def mlp_head(in_features: int, num_classes: int, hidden_layers: int, width: int, batchnorm: bool,
             dropout: float) -> nn.Module:
    """hidden_layers x (Linear -> BN? -> ReLU -> Dropout?) -> Linear; a plain Linear for 0 layers."""
    if hidden_layers == 0:
        return nn.Linear(in_features, num_classes)
    layers, width_in = [], in_features
    for _ in range(hidden_layers):
        layers.append(nn.Linear(width_in, width))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)


class MLPHead(Strategy):
    def build_head(self, model, num_classes: int) -> nn.Module:
        cfg = self.config
        device = next(model.parameters()).device
        head = mlp_head(model.feature_dim, num_classes, cfg.hidden_layers, cfg.width, cfg.batchnorm, cfg.dropout)
        return head.to(device)

    def rebuild(self, model, num_classes: int):
        model.head = self.build_head(model, num_classes)
        return model

    def transfer(self, model, data, ctx, objective=None):
        refuse_objective(objective, "mlp-head trains on cached clean features, so only natural training applies;"
                                    " drop [transfer.objective] or use finetune")
        cfg = self.config
        if cfg.batchnorm and cfg.hidden_layers and len(data.train) % cfg.batch_size == 1:
            raise RtkError(f"mlp-head: {len(data.train)} training examples in batches of {cfg.batch_size} leave a last"
                           " batch of one, which BatchNorm cannot normalise; change batch_size")
        train_head_on_features(model, data, ctx, cfg, lambda: self.rebuild(model, data.num_classes).head, "mlp head")
        model.eval()
        return model
