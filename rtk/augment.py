"""Batch augmentations on tensors (device-agnostic, seeded by a generator)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the original size at a random offset, flip half horizontally."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "crop-flip":
        return random_crop_flip(x, padding, True, generator)
    if kind == "flip":
        return random_crop_flip(x, 0, True, generator)
    if kind == "crop":
        return random_crop_flip(x, padding, False, generator)
    raise ValueError(f'unknown augmentation "{kind}"; use "none", "crop", "flip" or "crop-flip"')
