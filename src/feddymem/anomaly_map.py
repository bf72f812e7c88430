"""Anomaly maps: patch scores on the feature grid -> smoothed maps at the input resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius 4 sigma (the usual truncation), (2r + 1,)."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps with reflect padding; sigma 0 is a no-op."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps)
    r = kernel.numel() // 2
    pad_h = min(r, maps.shape[-2] - 1)
    pad_w = min(r, maps.shape[-1] - 1)
    # Reflect padding needs pad < size; beyond that the kernel is cropped (tiny maps only).
    kh = kernel[r - pad_h : r + pad_h + 1]
    kw = kernel[r - pad_w : r + pad_w + 1]
    x = F.pad(maps, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else maps
    x = F.conv2d(x, (kh / kh.sum()).view(1, 1, -1, 1))
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    return F.conv2d(x, (kw / kw.sum()).view(1, 1, 1, -1))


def to_anomaly_maps(
    patch_scores: torch.Tensor, *, image_hw: tuple[int, int], sigma: float = 4.0
) -> torch.Tensor:
    """(B, H, W) patch scores -> (B, H_in, W_in) anomaly maps: bilinear upsampling, then blur."""
    maps = F.interpolate(
        patch_scores.unsqueeze(1), size=image_hw, mode="bilinear", align_corners=False
    )
    return gaussian_blur(maps, sigma).squeeze(1)
