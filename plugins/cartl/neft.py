"""CARTL non-expansive fine-tuning (Chen et al., arXiv:2106.06667); options and defaults:
rtk_plugins.cartl.NEFTConfig."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from rtk.errors import RtkError
from rtk.stages.training import CrossEntropy, fit
from rtk.stages.strategy import set_trainable
from rtk_plugins.models.resnet import BasicBlock
from rtk_plugins.models.wrn import WideBasic
from rtk_plugins.transfer.base import Strategy
from rtk_plugins.transfer.batchnorm import bn_layers, freeze_bn_affine


class ConvexWideBasic(WideBasic):
    """CARTL's ParsevalBasicBlock: 0.5 * shortcut + 0.5 * residual (same weights as WideBasic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        if self.activate_before_residual:
            x = out
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(out)))))
        return 0.5 * out + 0.5 * self._shortcut(x)


class ConvexBasicBlock(BasicBlock):
    """CARTL's parseval_resnet BasicBlock: relu(0.5 * (residual + shortcut))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(0.5 * (self.bn2(self.conv2(out)) + self.shortcut(x)))


_CONVEX = {WideBasic: ConvexWideBasic, BasicBlock: ConvexBasicBlock}


class Scale(nn.Module):
    """Multiply a parametrized tensor by a constant (beta after the spectral normalisation)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.factor


def last_blocks(model, k: int) -> list[nn.Module]:
    blocks = model.blocks
    if k > len(blocks):
        raise RtkError(f"neft: k = {k} but the model has {len(blocks)} blocks (the head counts as one);"
                       f" choose k between 1 and {len(blocks)}")
    return blocks[len(blocks) - k:]


def make_convex(model, k: int) -> None:
    """Turn the residual units among the last k blocks into convex ones (weights unchanged, so
    state-dict keys stay those of the source)."""
    if not any(type(m) in _CONVEX or type(m) in _CONVEX.values() for m in model.modules()):
        raise RtkError("neft: convex_residual is implemented for rtk's wrn and resnet18 residual units only;"
                       " set convex_residual = false for this model")
    for block in last_blocks(model, k):
        if type(block) in _CONVEX:
            block.__class__ = _CONVEX[type(block)]


def constrained_layers(model, k: int, which: str = "code") -> list[nn.Module]:
    """The Conv2d/Linear layers of the last k blocks that get the spectral bound.

    ``"code"``: CARTL's rule (NISP-official/CARTL src/trainer/transfer_learning_trainer/
    sn_tl_trainer.py, _apply_spectral_norm): the Conv2d/Linear direct children of each block (a
    block that is itself one, such as the head, counts as its own child). On rtk's WRN units
    these are conv1, conv2 and convShortcut, as on CARTL's; rtk's resnet18 BasicBlocks give
    none, because CARTL's ResNet BasicBlock (src/networks/resnet.py, parseval_resnet.py) keeps
    its convolutions inside ``residual_function`` / ``shortcut`` Sequentials, which that rule does
    not enter: on a ResNet-18 CARTL normalises the FC alone. ``"all"``: every Conv2d/Linear
    inside the last k blocks."""
    layers = []
    for block in last_blocks(model, k):
        if which == "all":
            layers += [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            continue
        if isinstance(block, BasicBlock):  # CARTL's ResNet BasicBlock has no direct Conv2d child
            continue
        children = [block] if isinstance(block, (nn.Conv2d, nn.Linear)) else list(block.children())
        layers += [m for m in children if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers


def add_spectral_scaling(layer: nn.Module, beta: float, power_iterations: int) -> None:
    """weight = beta * W_orig / sigma(W_orig), sigma from power iteration on W_orig reshaped to
    (out, in*kh*kw); u, v advance only in training mode (torch's spectral_norm semantics)."""
    spectral_norm(layer, n_power_iterations=power_iterations)
    parametrize.register_parametrization(layer, "weight", Scale(beta))


def fold_spectral_scaling(layer: nn.Module, beta: float, exact: bool) -> None:
    """Replace the parametrization by a plain weight: beta * W_orig / sigma with the exact
    largest singular value of the reshaped W_orig (``exact``), or with the power-iteration
    estimate of the last training step, as the code's remove_spectral_norm does."""
    was_training = layer.training
    layer.eval()
    if exact:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        with torch.no_grad():
            w = layer.weight
            sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).double(), ord=2).to(w.dtype)
            w.mul_(beta / sigma)
    else:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    layer.train(was_training)


class NEFT(Strategy):
    def transfer(self, model, data, ctx, objective=None):
        cfg = self.config
        set_trainable(model, False)
        model.reset_head(data.num_classes, cfg.head_init)
        if cfg.convex_residual:
            make_convex(model, cfg.k)
        trained = last_blocks(model, cfg.k)
        for block in trained:
            set_trainable(block, True)
        trained_bn = {id(bn) for block in trained for bn in bn_layers(block)}
        if not cfg.bn_affine_trainable:
            freeze_bn_affine(model)
        layers = constrained_layers(model, cfg.k, cfg.spectral_layers)
        for layer in layers:
            add_spectral_scaling(layer, cfg.beta, cfg.power_iterations)

        def set_mode(m):
            m.train()
            for bn in bn_layers(m):
                policy = cfg.bn_stats if id(bn) in trained_bn else cfg.bn_stats_frozen_part
                if policy == "frozen":
                    bn.eval()

        params = [p for p in model.parameters() if p.requires_grad]
        try:
            fit(model, data.train, objective or CrossEntropy(), cfg, ctx, params=params,
                description=f"neft (last {cfg.k} blocks)", set_mode=set_mode)
        finally:
            for layer in layers:
                fold_spectral_scaling(layer, cfg.beta, cfg.exact_fold)
        model.eval()
        return model

    def rebuild(self, model, num_classes: int):
        """The folded NEFT architecture: a fresh head for ``num_classes`` and, with
        ``convex_residual``, the convex units (the spectral scaling is folded into the weights)."""
        model.reset_head(num_classes, self.config.head_init)
        if self.config.convex_residual:
            make_convex(model, self.config.k)
        return model
