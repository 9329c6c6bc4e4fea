"""Parameter-efficient fine-tuning modules for timm ViT and Swin encoders, as RoLI uses them
(Hua et al., "Initialization Matters for Adversarial Transfer Learning", arXiv:2312.05716; code
DongXzz/RoLI src/models/vit_lora, vit_adapter).

Both attach to the existing layers as child modules run by a forward hook, so the source's
state-dict keys are unchanged (a source checkpoint still loads) and the new parameters appear
under ``<layer>.lora`` / ``<mlp>.adapter``.

- LoRA (Hu et al., arXiv:2106.09685) on the query and value projections: timm fuses q, k, v in
  one ``attn.qkv`` Linear (out = 3*dim, order q, k, v), so the low-rank updates
  scale * B_q A_q dropout(x) and scale * B_v A_v dropout(x) are added to the q and v slices of
  its output; scale = alpha / r.
- Pfeiffer adapter (Pfeiffer et al., arXiv:2005.00247) after each block's MLP:
  h -> h + up(gelu(down(h))), width dim // reduction. RoLI applies it after the block's
  drop-path; here it wraps the MLP output, before timm's drop-path (identical at eval and
  without stochastic depth).

Inits: ``"standard"`` (LoRA: A kaiming-uniform, B zero; adapter: down PyTorch's default, up
zero) leaves the network's output unchanged at the start and trains; ``"zero"`` is the RoLI
code's (``LORA.ZEROINIT: True`` in DongXzz/RoLI configs/lora/*_roli.yaml;
src/models/vit_adapter/swin_transformer.py:95-99): every weight zero, so LoRA's gradients are
exactly zero and it never moves, and only the adapter's up-projection bias ever trains.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from rtk.errors import RtkError


class QVLoRA(nn.Module):
    def __init__(self, dim: int, rank: int, alpha: float, dropout: float, init: str):
        super().__init__()
        self.q_A = nn.Linear(dim, rank, bias=False)
        self.q_B = nn.Linear(rank, dim, bias=False)
        self.v_A = nn.Linear(dim, rank, bias=False)
        self.v_B = nn.Linear(rank, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank
        for a, b in ((self.q_A, self.q_B), (self.v_A, self.v_B)):
            if init == "zero":
                nn.init.zeros_(a.weight)
            else:
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        q = self.q_B(self.q_A(x)) * self.scaling
        v = self.v_B(self.v_A(x)) * self.scaling
        return torch.cat([q, torch.zeros_like(q), v], dim=-1)


class PfeifferAdapter(nn.Module):
    def __init__(self, dim: int, reduction: int, init: str):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if init == "zero":
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


def _add_lora_output(module, inputs, output):
    return output + module.lora(inputs[0])


def _adapt_output(module, inputs, output):
    return module.adapter(output)


def fused_qkv_layers(encoder: nn.Module) -> list[nn.Linear]:
    layers = [m.qkv for m in encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    return [q for q in layers if q.out_features == 3 * q.in_features]


def transformer_mlps(encoder: nn.Module) -> list[nn.Module]:
    """The MLP of every transformer block (a module with both ``attn`` and ``mlp``)."""
    return [m.mlp for m in encoder.modules() if hasattr(m, "attn") and isinstance(getattr(m, "mlp", None), nn.Module)]


def attach(hosts: list[nn.Module], name: str, build: Callable[[nn.Module], nn.Module], hook) -> list[nn.Module]:
    """``host.<name> = build(host)`` on every host, with ``hook`` after the host's forward; returns the new modules."""
    added = []
    for host in hosts:
        module = build(host)
        setattr(host, name, module)
        host.register_forward_hook(hook)
        added.append(module)
    return added


def add_lora(encoder: nn.Module, rank: int, alpha: float, dropout: float, init: str) -> list[nn.Module]:
    """LoRA on q and v of every fused-qkv attention in ``encoder``; returns the LoRA modules."""
    layers = fused_qkv_layers(encoder)
    if not layers:
        raise RtkError("roli: variant lora needs attention layers with a fused qkv Linear (timm ViT or Swin);"
                       " use variant full, bias or linear for this model")

    def lora(qkv: nn.Module) -> nn.Module:
        return QVLoRA(qkv.in_features, rank, alpha, dropout, init).to(qkv.weight.device)

    return attach(layers, "lora", lora, _add_lora_output)


def add_adapters(encoder: nn.Module, reduction: int, init: str) -> list[nn.Module]:
    """A Pfeiffer adapter after the MLP of every transformer block; returns the adapters."""
    mlps = transformer_mlps(encoder)
    if not mlps:
        raise RtkError("roli: variant adapter needs transformer blocks with attn and mlp (timm ViT or Swin);"
                       " use variant full, bias or linear for this model")

    def adapter(mlp: nn.Module) -> nn.Module:
        out = [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1]  # the MLP's own last Linear
        return PfeifferAdapter(out.out_features, reduction, init).to(out.weight.device)

    return attach(mlps, "adapter", adapter, _adapt_output)


def bias_parameters(encoder: nn.Module, match: str) -> list[nn.Parameter]:
    """``match = "name"``: every parameter whose name contains "bias" (the code's tinytl-bias,
    which includes LayerNorm shifts and Swin's relative_position_bias_table); ``"bias"``: only
    parameters named ``bias``."""
    if match == "name":
        return [p for n, p in encoder.named_parameters() if "bias" in n]
    return [p for n, p in encoder.named_parameters() if n.rpartition(".")[2] == "bias"]
