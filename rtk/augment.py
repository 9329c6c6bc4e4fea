"""Batch augmentations on tensors (device-agnostic, seeded by a generator)."""
from __future__ import annotations

import math

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


def resized_crop_boxes(n: int, h: int, w: int, generator: torch.Generator, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """(n, 4) crop boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop.get_params
    does: area fraction uniform in ``scale``, log aspect ratio uniform in ``ratio``, the first of
    ``attempts`` draws that fits; else the whole image cropped to the nearest allowed ratio."""
    area = torch.empty(n, attempts).uniform_(*scale, generator=generator) * (h * w)
    aspect = torch.exp(torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.float().argmax(1)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    cw, ch, found = pick(cw), pick(ch), fits.any(1)
    in_ratio = w / h  # the fallback: a central crop of the allowed ratio closest to the image's
    if in_ratio < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(h * ratio[1]), h
    else:
        fw, fh = w, h
    cw, ch = torch.where(found, cw, float(fw)), torch.where(found, ch, float(fh))
    top = (torch.rand(n, generator=generator) * (h - ch + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - cw + 1)).floor()
    top, left = torch.where(found, top, ((h - ch) / 2).round()), torch.where(found, left, ((w - cw) / 2).round())
    return torch.stack([top, left, ch, cw], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box (top, left, height, width in pixels) and resize it back to the
    input size, bilinear: one grid_sample for the whole batch instead of a loop over images."""
    n, _, h, w = x.shape
    top, left, ch, cw = boxes.to(x.device, x.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    # align_corners=False: output pixel centres u in [-1, 1] land on left + (u + 1) / 2 * cw in pixel edges
    theta[:, 0, 0], theta[:, 0, 2] = cw / w, (cw + 2 * left) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch / h, (ch + 2 * top) / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    # Sample only inside the box (its first to last pixel centre), as cropping before resizing does.
    low = torch.stack([(2 * left + 1) / w - 1, (2 * top + 1) / h - 1], 1)[:, None, None, :]
    high = torch.stack([(2 * (left + cw) - 1) / w - 1, (2 * (top + ch) - 1) / h - 1], 1)[:, None, None, :]
    grid = torch.maximum(torch.minimum(grid, high), low)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "resized-crop-flip":
        x = resized_crop(x, resized_crop_boxes(len(x), x.shape[-2], x.shape[-1], generator))
        return random_crop_flip(x, 0, True, generator)
    if kind == "crop-flip":
        return random_crop_flip(x, padding, True, generator)
    if kind == "flip":
        return random_crop_flip(x, 0, True, generator)
    if kind == "crop":
        return random_crop_flip(x, padding, False, generator)
    raise ValueError(f'unknown augmentation "{kind}"; use "none", "crop", "flip", "crop-flip" or "resized-crop-flip"')
