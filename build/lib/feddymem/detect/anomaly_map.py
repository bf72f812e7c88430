"""Anomaly maps: patch scores on the feature grid -> smoothed maps at the input resolution."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=32)
def axis_operator(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """(n_out, n_in) matrix of bilinear upsampling followed by the Gaussian blur along one axis.

    Both steps are linear and separable, so the matrix is built by running them on the unit
    vectors; `to_anomaly_maps` then needs two small matrix products per map instead of a
    full-resolution interpolation and two convolutions (`benchmarks/detector.py --only speed`
    times this stage).
    """
    basis = torch.eye(n_in, dtype=torch.float32).view(n_in, 1, n_in, 1)
    columns = F.interpolate(basis, size=(n_out, 1), mode="bilinear", align_corners=False)
    # The width axis has size 1 here, so the blur acts along this axis only.
    return gaussian_blur(columns, sigma)[:, 0, :, 0].t().contiguous()


def to_anomaly_maps(
    patch_scores: torch.Tensor, *, image_hw: tuple[int, int], sigma: float = 4.0
) -> torch.Tensor:
    """(B, H, W) patch scores -> (B, H_in, W_in) anomaly maps: bilinear upsampling, then blur
    (reflect padding), applied as `A_h @ scores @ A_w^T` with the per-axis operators."""
    _, h, w = patch_scores.shape
    rows = axis_operator(h, int(image_hw[0]), float(sigma)).to(patch_scores)
    cols = axis_operator(w, int(image_hw[1]), float(sigma)).to(patch_scores)
    return torch.matmul(torch.matmul(rows, patch_scores), cols.t())
