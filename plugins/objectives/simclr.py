"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv:2002.05709): NT-Xent on two augmented views, through a projection head
that belongs to the objective, not to the model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtk.errors import RtkError
from rtk.stages.training import Objective
from rtk_plugins.objectives.tensor_augment import simclr_view

LARGE_NUM = 1e9  # objective.py masks self-similarity with this


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """google-research/simclr objective.py add_contrastive_loss: l2-normalise, then for each
    view-1 anchor a softmax cross-entropy over [view-2 | view-1 minus itself] with the positive
    at its own index, and the same for view-2 anchors; the loss is the SUM of the two means."""
    h1, h2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    n = len(h1)
    mask = torch.eye(n, device=h1.device, dtype=h1.dtype) * LARGE_NUM
    logits_aa = h1 @ h1.T / temperature - mask
    logits_bb = h2 @ h2.T / temperature - mask
    logits_ab = h1 @ h2.T / temperature
    logits_ba = h2 @ h1.T / temperature
    positives = torch.arange(n, device=h1.device)
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), positives)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], 1), positives)
    return loss_a + loss_b


def projection_head(feature_dim: int, hidden: int, out: int) -> nn.Module:
    """g(h) = W2 ReLU(W1 h), the paper's nonlinear projection (Sec. 2.1)."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class SimCLR(Objective):
    def __init__(self, config):
        self.config = config
        self.head: nn.Module | None = None

    def setup(self, model, device) -> None:
        if self.head is not None:
            return
        feature_dim = getattr(model, "feature_dim", None)
        if not isinstance(feature_dim, int):
            raise RtkError("simclr needs a model with an integer feature_dim (the rtk model contract) to size its"
                           " projection head")
        cfg = self.config
        self.head = projection_head(feature_dim, cfg.projection_hidden or feature_dim, cfg.projection_dim).to(device)

    def parameters(self):
        return [] if self.head is None else list(self.head.parameters())

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        options = dict(crop_scale_min=cfg.crop_scale_min, color_jitter_strength=cfg.color_jitter,
                       grayscale_p=cfg.grayscale_p, blur=cfg.blur)
        return simclr_view(images, **options), simclr_view(images, **options)

    def loss(self, model, images, labels):
        if self.head is None:
            self.setup(model, images.device)
        self.head.train(model.training)
        first, second = self.views(images)
        # One forward over both views, so batch-norm statistics cover all 2N images as in SimCLR.
        z = self.head(model.features(torch.cat([first, second])))
        return nt_xent(*z.chunk(2), self.config.temperature)

    def state_dict(self) -> dict:
        return {} if self.head is None else {f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        if head and self.head is not None:
            self.head.load_state_dict(head)
