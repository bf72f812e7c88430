"""Heat-map overlays: an anomaly map drawn over the image it was computed from."""

from __future__ import annotations

import numpy as np
import torch


def color_scale(*, threshold: float | None, map_floor: float | None) -> tuple[float, float | None]:
    """``(vmin, vmax)`` of a model's heat maps.

    Blue at the held-out normals' median map value (``map_floor``; 0 for models saved without
    it), red at 1.5x the threshold, so normal texture stays cool and what scores like an
    anomalous image stands out.  ``vmax`` is None without a threshold: each map is then drawn
    to its own maximum.
    """
    vmax = threshold * 1.5 if threshold else None
    vmin = map_floor if map_floor is not None and vmax and map_floor < vmax else 0.0
    return vmin, vmax


def resample_map(amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """An ``(H_in, W_in)`` anomaly map resampled bilinearly to ``size`` = ``(H, W)``."""
    return torch.nn.functional.interpolate(
        amap[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()


def overlay(image: np.ndarray, amap: np.ndarray, *, vmin: float, vmax: float) -> np.ndarray:
    """Heat map (jet, blue at `vmin`, red at `vmax`) blended over the image, both (H, W, 3)
    uint8; `amap` is (H, W)."""
    from matplotlib import colormaps

    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = (colormaps["jet"](norm)[..., :3] * 255).astype(np.float32)
    return (0.55 * image.astype(np.float32) + 0.45 * heat).astype(np.uint8)
