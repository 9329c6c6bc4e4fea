"""Batched image augmentations with independent random parameters per image, on any device.

torchvision's functional ops apply one set of parameters to a whole batch, and looping over
images costs a kernel launch per image and op; these ops take per-image parameter tensors and
match torchvision's per-image results (tested against them). Images are (N, C, H, W) in [0, 1].
Random parameters are drawn on the CPU from ``generator`` (default: torch's global RNG), so a
seed gives the same augmentations on every device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


def uniform(n: int, low: float, high: float, generator=None, device=None) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def coin(n: int, p: float, generator=None, device=None) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).to(device)


def per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


# --- geometry -------------------------------------------------------------------------------

def resized_crop_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                       generator=None, trials: int = 10) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop.get_params does:
    area fraction ~ U(scale), log aspect ~ U(log ratio), first of ``trials`` draws that fits,
    else a central crop clamped to the ratio range."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, trials, generator=generator))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, trials, generator=generator))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(1)  # index of the first fitting draw (0 when none fits)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    found = fits.any(1)
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    top = torch.floor(torch.rand(n, generator=generator) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator) * (width - w + 1))
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) and resize it back to (H, W) with bilinear
    interpolation (pixel-centre aligned, as F.interpolate with align_corners=False), mirroring
    the images where ``flip`` is true. One grid_sample for the whole batch."""
    n, _, height, width = x.shape
    boxes = boxes.to(device=x.device, dtype=x.dtype)
    top, left, h, w = boxes.unbind(1)
    sx, sy = w / width, h / height
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = sy, (2 * top + h) / height - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --- colour ---------------------------------------------------------------------------------

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of RGB images (single-channel images are returned as they are)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (per_image(factor) * x + (1 - per_image(factor)) * other).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    value = x.amax(1)
    chroma = value - x.amin(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    return torch.stack([hue, saturation, value], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = (t.unsqueeze(1) for t in x.unbind(1))
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + hue * 6) % 6
    return value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``factor`` (a fraction of a full turn, in [-0.5, 0.5])."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    hue = (hsv[:, 0] + factor.to(x).view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], 1)).clamp(0, 1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 generator=None) -> torch.Tensor:
    """torchvision's ColorJitter per image: factors ~ U[max(0, 1-b), 1+b] (hue ~ U[-h, h]),
    the four adjustments in a random order drawn per image."""
    n, dev = len(x), x.device
    factors = [uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, dev),
               uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, dev),
               uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, dev),
               uniform(n, -hue, hue, generator, dev)]
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    order = torch.rand(n, 4, generator=generator).argsort(1).to(dev)
    for position in range(4):
        for index, op in enumerate(ops):
            chosen = order[:, position] == index
            if chosen.any():
                x = torch.where(per_image(chosen), op(x, factors[index]), x)
    return x


# --- blur -----------------------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding (torchvision's gaussian_blur)."""
    if kernel_size <= 1:
        return x
    if kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd, got {kernel_size}")
    n, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    grid = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (grid[None, :] / sigma.to(x).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, k)
    pad = kernel_size // 2
    flat = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return flat.view(n, c, h, w)


# --- SimCLR's pipeline ----------------------------------------------------------------------

def simclr_view(x: torch.Tensor, *, crop_scale_min: float = 0.08, color_jitter_strength: float = 0.5,
                color_p: float = 0.8, grayscale_p: float = 0.2, blur: bool = False, blur_p: float = 0.5,
                generator=None) -> torch.Tensor:
    """One SimCLR view of every image (Chen et al. 2020, arXiv:2002.05709, Appendix A): random
    resized crop (area in [crop_scale_min, 1], aspect in [3/4, 4/3]) with a horizontal flip half
    the time; with probability ``color_p`` colour jitter of strength s (brightness, contrast,
    saturation 0.8s, hue 0.2s); grayscale with probability ``grayscale_p``; optionally a
    Gaussian blur (p=``blur_p``, sigma ~ U[0.1, 2], kernel 10% of the image side)."""
    n, c, h, w = x.shape
    dev = x.device
    boxes = resized_crop_boxes(n, h, w, scale=(crop_scale_min, 1.0), generator=generator)
    x = resized_crop(x, boxes, flip=coin(n, 0.5, generator, dev))
    if color_jitter_strength > 0 and color_p > 0:
        s = color_jitter_strength
        jittered = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, generator)
        x = torch.where(per_image(coin(n, color_p, generator, dev)), jittered, x)
    if c == 3 and grayscale_p > 0:
        x = torch.where(per_image(coin(n, grayscale_p, generator, dev)), grayscale(x).expand_as(x), x)
    if blur and blur_p > 0:
        kernel = 2 * (h // 10 // 2) + 1  # SimCLR: radius = (10% of the side) // 2
        sigma = uniform(n, 0.1, 2.0, generator, dev)
        x = torch.where(per_image(coin(n, blur_p, generator, dev)), gaussian_blur(x, kernel, sigma), x)
    return x.contiguous()
