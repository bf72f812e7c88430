"""Exact pixel-level AUROC over all pixels of all images."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from feddymem.metrics.inputs import Floating, pixel_inputs


def _auroc_sorted(neg: NDArray[Floating], pos: NDArray[Floating]) -> float:
    """Exact Mann-Whitney AUROC from ascending-sorted negative and positive scores."""
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    # 2 * (#(neg < pos) + 0.5 #(neg == pos)), exact in int64 up to ~1e18.
    twice_wins = 2 * int(below.sum(dtype=np.int64)) + int((at_or_below - below).sum(dtype=np.int64))
    return twice_wins / (2.0 * float(neg.size) * float(pos.size))


def pixel_auroc_checked(masks: NDArray[np.bool_], maps: NDArray[Floating]) -> float:
    flat_m = masks.reshape(-1)
    flat_s = maps.reshape(-1)
    pos = flat_s[flat_m]
    neg = flat_s[~flat_m]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            "pixel AUROC is undefined: masks contain "
            + ("no anomalous pixels" if pos.size == 0 else "no normal pixels")
        )
    pos.sort()
    neg.sort()
    return _auroc_sorted(neg, pos)


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Exact pixel-level AUROC over all pixels of all images.

    Sorts normal and anomalous pixel scores separately and counts, for each anomalous pixel,
    the normal pixels scoring below it (ties one half). Memory: one copy of the scores plus one
    int64 per anomalous pixel; works on the input dtype (pass float32 maps to halve it).

    Args:
        masks: ``(N, H, W)`` bool ground truth.
        maps: ``(N, H, W)`` finite anomaly maps.

    Returns:
        AUROC in [0, 1], identical to ``roc_auc_score(masks.ravel(), maps.ravel())``.
    """
    m, a = pixel_inputs(masks, maps)
    return pixel_auroc_checked(m, a)
