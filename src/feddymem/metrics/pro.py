"""Per-region overlap: the exact PRO curve and the normalised AUPRO under an FPR limit."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from feddymem.metrics.inputs import Floating, pixel_inputs


def _structure(connectivity: int) -> NDArray[np.bool_]:
    """3-D labelling structure that connects pixels inside one image only."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    return st


def _pro_segments(
    masks: NDArray[np.bool_],
    maps: NDArray[Floating],
    *,
    connectivity: int,
    fpr_limit: float | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Exact PRO curve as consecutive linear segments, in order of decreasing threshold.

    Segment ``i`` belongs to the ``i``-th largest distinct normal-pixel score ``v_i`` and runs
    from ``(FPR(> v_i), PRO(> v_i))`` to ``(FPR(>= v_i), PRO(>= v_i))``, where ``FPR(op t)`` is
    the fraction of normal pixels with score ``op t`` and ``PRO(op t)`` the mean over ground-truth
    regions of the fraction of the region's pixels with score ``op t``. Lowering the threshold
    through scores held by anomalous pixels only moves the curve vertically; those moves lie on
    the segments' joins, so the segments trace every vertex of the full curve.

    When ``fpr_limit`` is given, only segments starting below it are returned.

    Returns:
        ``(fpr_start, pro_start, fpr_end, pro_end)``, each ``(K,)`` float64.
    """
    labelled, n_regions = ndimage.label(masks, structure=_structure(connectivity))
    if n_regions == 0:
        raise ValueError("PRO is undefined: masks contain no anomalous pixels")
    flat_m = masks.reshape(-1)
    flat_s = maps.reshape(-1)
    neg = flat_s[~flat_m]
    if neg.size == 0:
        raise ValueError("PRO is undefined: masks contain no normal pixels")
    neg.sort()
    n_neg = neg.size

    # Distinct normal scores (ascending): value i occupies neg[starts[i]:ends[i]], so
    # FPR(>= v_i) = (n_neg - starts[i]) / n_neg and FPR(> v_i) = (n_neg - ends[i]) / n_neg.
    lo = 0
    if fpr_limit is not None:
        # Values below v_cut end at or before position n_neg * (1 - fpr_limit): their segments
        # start at or beyond the limit. Skip them before building the distinct-value arrays.
        v_cut = neg[min(n_neg - 1, int(n_neg * (1.0 - fpr_limit)))]
        lo = int(np.searchsorted(neg, v_cut, side="left"))
    top = neg[lo:]
    change = np.flatnonzero(top[1:] != top[:-1]) + (lo + 1)
    starts = np.concatenate(([lo], change))
    ends = np.concatenate((change, [n_neg]))
    del change
    if fpr_limit is not None:
        # Keep exactly the segments whose start FPR(> v_i) is below the limit.
        first = int(np.searchsorted(ends, n_neg * (1.0 - fpr_limit), side="right"))
        starts, ends = starts[first:], ends[first:]
    values = neg[starts]
    del neg, top

    # Anomalous pixels: score and weight 1 / (R * |region|); sum of all weights is 1.
    region = labelled.reshape(-1)[flat_m]
    del labelled
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
    pos_scores = flat_s[flat_m]
    order = np.argsort(pos_scores, kind="stable")
    pos_sorted = pos_scores[order]
    weights = 1.0 / (n_regions * sizes[region[order]])
    del region, order, pos_scores
    # tail[j] = sum of weights of sorted positions >= j; tail[P] = 0.
    tail = np.zeros(pos_sorted.size + 1, dtype=np.float64)
    tail[:-1] = np.cumsum(weights[::-1])[::-1]

    pro_ge = tail[np.searchsorted(pos_sorted, values, side="left")]
    pro_gt = tail[np.searchsorted(pos_sorted, values, side="right")]
    fpr_ge = (n_neg - starts) / n_neg
    fpr_gt = (n_neg - ends) / n_neg
    # Decreasing threshold = reversed ascending order.
    return fpr_gt[::-1], pro_gt[::-1], fpr_ge[::-1], pro_ge[::-1]


def pro_curve(
    masks: ArrayLike, maps: ArrayLike, *, connectivity: int = 8
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Exact per-region-overlap curve (every distinct threshold), for plots and checks.

    Ground-truth regions are the connected components of each image's mask
    (``connectivity`` 8 or 4, never across images). For a threshold ``t`` a pixel is predicted
    anomalous when its score is ``>= t``.

    Args:
        masks: ``(N, H, W)`` bool ground truth; at least one anomalous and one normal pixel.
        maps: ``(N, H, W)`` finite anomaly maps.
        connectivity: 8 (default, as in the MVTec AD evaluation) or 4.

    Returns:
        ``(fpr, pro)``, both ``(K,)`` float64, starting at ``(0, 0)``, non-decreasing in both
        coordinates, ending at ``fpr == 1``. Consecutive points are joined by straight lines.
    """
    m, a = pixel_inputs(masks, maps)
    f0, p0, f1, p1 = _pro_segments(m, a, connectivity=connectivity, fpr_limit=None)
    fpr = np.empty(2 * f0.size, dtype=np.float64)
    pro = np.empty_like(fpr)
    fpr[0::2], fpr[1::2] = f0, f1
    pro[0::2], pro[1::2] = p0, p1
    if pro[0] > 0.0:  # anomalous pixels above every normal one: vertical start from (0, 0)
        fpr, pro = np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))
    return fpr, pro


def aupro_checked(
    masks: NDArray[np.bool_],
    maps: NDArray[Floating],
    *,
    fpr_limit: float,
    connectivity: int,
) -> float:
    f0, p0, f1, p1 = _pro_segments(masks, maps, connectivity=connectivity, fpr_limit=fpr_limit)
    # Clip each segment at fpr_limit by linear interpolation along the segment; only the last
    # segment can cross the limit (segments are consecutive and f0 < fpr_limit for all).
    width = f1 - f0
    used = np.clip(fpr_limit - f0, 0.0, width)  # part of each segment below the limit
    frac = np.divide(used, width, out=np.ones_like(width), where=width > 0)
    p_end = p0 + frac * (p1 - p0)
    area = float(np.sum(used * (p0 + p_end)) / 2.0)
    return area / fpr_limit


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    *,
    fpr_limit: float = 0.3,
    connectivity: int = 8,
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    For every threshold ``t`` (every distinct score; exact, no binning):
    ``FPR(t)`` = fraction of normal pixels (outside every mask, all images) with score ``>= t``;
    ``PRO(t)`` = mean over all ground-truth regions (connected components of each image's mask)
    of the fraction of the region's pixels with score ``>= t``. The points ``(FPR(t), PRO(t))``,
    starting at ``(0, 0)``, are joined by straight lines (see :func:`pro_curve`) and the area
    under this polyline from ``FPR = 0`` to ``FPR = fpr_limit`` is computed exactly (trapezoids).

    Interpolation at the limit: the curve segment that crosses ``FPR = fpr_limit`` is cut there
    and its PRO value at the cut is linearly interpolated between the segment's two end points.
    A segment ending exactly at the limit is kept whole; vertical segments add no area.

    The area is divided by ``fpr_limit``, so a perfect map gives 1.0 and an uninformative
    (random) map gives about ``fpr_limit / 2`` (PRO ≈ FPR), e.g. 0.15 for the default 0.3.

    Args:
        masks: ``(N, H, W)`` bool ground truth; at least one anomalous and one normal pixel.
        maps: ``(N, H, W)`` finite anomaly maps.
        fpr_limit: upper integration limit in (0, 1].
        connectivity: pixel connectivity of the regions, 8 (default, as MVTec AD) or 4.

    Returns:
        Normalised AUPRO in [0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    m, a = pixel_inputs(masks, maps)
    return aupro_checked(m, a, fpr_limit=fpr_limit, connectivity=connectivity)
