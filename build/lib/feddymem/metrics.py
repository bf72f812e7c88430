"""Detection metrics: image AUROC, F1-max, pixel AUROC and AUPRO.

NumPy at the edges: every function takes array-likes and returns plain Python floats.

Shapes used throughout:

* ``labels``: ``(N,)`` image labels, ``0`` = normal, ``1`` = anomalous (bool or integer).
* ``scores`` / ``image_scores``: ``(N,)`` finite real anomaly scores, higher = more anomalous.
* ``masks``: ``(N, H, W)`` ground-truth pixel masks, bool (or numeric with values in {0, 1}).
* ``maps``: ``(N, H, W)`` finite real anomaly maps aligned with ``masks``.

The pixel metrics are exact (no threshold binning) and avoid ``O(P)`` float64 temporaries over
all ``P`` pixels: they sort the normal and the anomalous pixel scores separately (NumPy's
vectorised sort) and merge the two sorted arrays with :func:`numpy.searchsorted`. Measured on
two busy cores with 20 million float32 pixels: pixel AUROC under 1 s, AUPRO about 2 s, a few
hundred MB extra.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

__all__ = [
    "DetectionMetrics",
    "aupro",
    "evaluate",
    "f1_max",
    "image_auroc",
    "operating_point",
    "per_defect_image_auroc",
    "pixel_auroc",
    "pro_curve",
]

logger = logging.getLogger(__name__)

_Floating = np.floating[Any]


# --------------------------------------------------------------------------- input checks


def _as_labels(labels: ArrayLike, *, name: str = "labels") -> NDArray[np.bool_]:
    """Validate ``(N,)`` binary labels and return them as bool."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return _binary(arr, name=name)


def _binary(arr: NDArray[Any], *, name: str) -> NDArray[np.bool_]:
    """Return ``arr`` as bool, requiring bool dtype or numeric values in {0, 1}."""
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or numeric 0/1, got dtype {arr.dtype}")
    if not bool(np.all((arr == 0) | (arr == 1))):
        raise ValueError(f"{name} must contain only 0 and 1 (or be boolean)")
    return arr.astype(bool)


def _as_scores(scores: ArrayLike, *, name: str, ndim: int) -> NDArray[_Floating]:
    """Validate finite real scores of dimension ``ndim``; integers are cast to float64."""
    arr = np.asarray(scores)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not bool(np.isfinite(arr).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _image_inputs(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[_Floating]]:
    y = _as_labels(labels)
    s = _as_scores(scores, name="scores", ndim=1)
    if s.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have the same shape")
    return y, s


def _pixel_inputs(
    masks: ArrayLike, maps: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[_Floating]]:
    m_arr = np.asarray(masks)
    if m_arr.ndim != 3:
        raise ValueError(f"masks must be 3-D (N, H, W), got shape {m_arr.shape}")
    m = _binary(m_arr, name="masks")
    a = _as_scores(maps, name="maps", ndim=3)
    if a.shape != m.shape:
        raise ValueError(f"masks {m.shape} and maps {a.shape} must have the same shape")
    return m, a


def _require_both_classes(y: NDArray[np.bool_], *, what: str) -> None:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        present = "anomalous" if n_pos else "normal"
        raise ValueError(
            f"{what} is undefined: only one class present (all {y.size} are {present})"
        )


# --------------------------------------------------------------------------- image level


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of image scores.

    Args:
        labels: ``(N,)`` 0 = normal, 1 = anomalous.
        scores: ``(N,)`` finite anomaly scores.

    Returns:
        AUROC in [0, 1] (ties count one half).

    Raises:
        ValueError: bad shapes, non-finite scores, non-binary labels, or only one class present.
    """
    y, s = _image_inputs(labels, scores)
    _require_both_classes(y, what="image AUROC")
    return float(roc_auc_score(y, s))


def per_defect_image_auroc(
    labels: ArrayLike, scores: ArrayLike, defects: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """Image AUROC of each defect type against every normal image.

    Args:
        labels: ``(N,)`` 0 = normal, 1 = anomalous; at least one of each.
        scores: ``(N,)`` finite anomaly scores.
        defects: ``N`` defect names (the ``test/<defect>`` folder); ignored for normal images.

    Returns:
        ``{defect: {"n": anomalous images of that type, "image_auroc": value}}``, by name.

    Raises:
        ValueError: as :func:`image_auroc`, or ``defects`` of another length.
    """
    y, s = _image_inputs(labels, scores)
    _require_both_classes(y, what="per-defect image AUROC")
    names = np.asarray(list(defects), dtype=object)
    if names.shape != y.shape:
        raise ValueError(f"defects has {names.size} entries for {y.size} labels")
    normal = ~y
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted({str(d) for d in names[y]}):
        pick = normal | (y & (names == name))
        out[name] = {
            "n": int(np.count_nonzero(y & (names == name))),
            "image_auroc": image_auroc(y[pick], s[pick]),
        }
    return out


def f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best F1 score over all thresholds ``score >= t``.

    Args:
        labels: ``(N,)`` 0 = normal, 1 = anomalous; at least one anomalous.
        scores: ``(N,)`` finite anomaly scores.

    Returns:
        ``max_t 2 P(t) R(t) / (P(t) + R(t))`` over the thresholds of
        :func:`sklearn.metrics.precision_recall_curve`.
    """
    y, s = _image_inputs(labels, scores)
    if not y.any():
        raise ValueError("F1-max is undefined: no anomalous sample in labels")
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def operating_point(
    labels: ArrayLike, scores: ArrayLike, *, threshold: float
) -> dict[str, float | int]:
    """What a fixed decision threshold does on a labelled set: an image is flagged anomalous
    where its score exceeds ``threshold`` (as ``predict`` decides).

    The AUROC says how well scores rank; this says what the detector's own threshold, set on
    normal images only, catches and how often it raises a false alarm.

    Args:
        labels: ``(N,)`` 0 = normal, 1 = anomalous; both classes present.
        scores: ``(N,)`` finite anomaly scores.
        threshold: finite decision threshold.

    Returns:
        ``threshold``; ``recall`` (flagged share of the anomalous images, the TPR);
        ``false_alarm_rate`` (flagged share of the normal images, the FPR); ``precision``
        (anomalous share of the flagged images, 0 when none is flagged); ``f1``; ``flagged``
        (images flagged).
    """
    y, s = _image_inputs(labels, scores)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if y.all() or not y.any():
        raise ValueError("an operating point needs both normal and anomalous images")
    flagged = s > threshold
    hits = int(np.count_nonzero(flagged & y))
    n_flagged = int(np.count_nonzero(flagged))
    recall = hits / int(np.count_nonzero(y))
    precision = hits / n_flagged if n_flagged else 0.0
    f1 = 2.0 * precision * recall / (precision + recall) if hits else 0.0
    return {
        "threshold": float(threshold),
        "recall": recall,
        "false_alarm_rate": int(np.count_nonzero(flagged & ~y)) / int(np.count_nonzero(~y)),
        "precision": precision,
        "f1": f1,
        "flagged": n_flagged,
    }


# --------------------------------------------------------------------------- pixel level


def _auroc_sorted(neg: NDArray[_Floating], pos: NDArray[_Floating]) -> float:
    """Exact Mann-Whitney AUROC from ascending-sorted negative and positive scores."""
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    # 2 * (#(neg < pos) + 0.5 #(neg == pos)), exact in int64 up to ~1e18.
    twice_wins = 2 * int(below.sum(dtype=np.int64)) + int((at_or_below - below).sum(dtype=np.int64))
    return twice_wins / (2.0 * float(neg.size) * float(pos.size))


def _pixel_auroc_checked(masks: NDArray[np.bool_], maps: NDArray[_Floating]) -> float:
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
    m, a = _pixel_inputs(masks, maps)
    return _pixel_auroc_checked(m, a)


def _structure(connectivity: int) -> NDArray[np.bool_]:
    """3-D labelling structure that connects pixels inside one image only."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    return st


def _pro_segments(
    masks: NDArray[np.bool_],
    maps: NDArray[_Floating],
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
    m, a = _pixel_inputs(masks, maps)
    f0, p0, f1, p1 = _pro_segments(m, a, connectivity=connectivity, fpr_limit=None)
    fpr = np.empty(2 * f0.size, dtype=np.float64)
    pro = np.empty_like(fpr)
    fpr[0::2], fpr[1::2] = f0, f1
    pro[0::2], pro[1::2] = p0, p1
    if pro[0] > 0.0:  # anomalous pixels above every normal one: vertical start from (0, 0)
        fpr, pro = np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))
    return fpr, pro


def _aupro_checked(
    masks: NDArray[np.bool_],
    maps: NDArray[_Floating],
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
    m, a = _pixel_inputs(masks, maps)
    return _aupro_checked(m, a, fpr_limit=fpr_limit, connectivity=connectivity)


# --------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class DetectionMetrics:
    """Image- and pixel-level results of one evaluation.

    Attributes:
        image_auroc: AUROC of the image scores.
        f1_max: best image-level F1 over thresholds.
        pixel_auroc: pixel AUROC over the pixel-evaluated images, ``None`` when not computable.
        aupro: normalised AUPRO (FPR ≤ 0.3) over the same images, ``None`` when not computable.
        n_normal: number of normal images.
        n_anomalous: number of anomalous images.
        n_pixel_images: number of images that entered the pixel metrics.
    """

    image_auroc: float
    f1_max: float
    pixel_auroc: float | None
    aupro: float | None
    n_normal: int
    n_anomalous: int
    n_pixel_images: int

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain dict of the fields (JSON-serialisable)."""
        return dataclasses.asdict(self)


def evaluate(
    *,
    labels: ArrayLike,
    image_scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    has_mask: ArrayLike | None = None,
) -> DetectionMetrics:
    """Compute every detection metric for one test set.

    Pixel metrics use only images that have a trustworthy mask: ``has_mask[i]`` is True and the
    image is not an anomalous one with an empty mask (anomalous images whose mask is empty or
    missing count at image level only). When ``has_mask`` is None, every normal image and every
    anomalous image with a non-empty mask is used. Normal images that enter must have empty masks.

    Args:
        labels: ``(N,)`` 0 = normal, 1 = anomalous; both classes present.
        image_scores: ``(N,)`` finite image anomaly scores.
        masks: ``(N, H, W)`` bool ground truth, or None (image metrics only).
        maps: ``(N, H, W)`` anomaly maps; given exactly when ``masks`` is given.
        has_mask: ``(N,)`` bool, which images have a real mask; None = infer as above.

    Returns:
        :class:`DetectionMetrics`; ``pixel_auroc`` and ``aupro`` are None when no masks are given
        or the evaluated images hold no anomalous (or no normal) pixel.
    """
    y, s = _image_inputs(labels, image_scores)
    i_auroc = image_auroc(y, s)
    f1 = f1_max(y, s)
    n_anom = int(np.count_nonzero(y))
    n_norm = int(y.size - n_anom)

    p_auroc: float | None = None
    p_aupro: float | None = None
    n_pix = 0
    if (masks is None) != (maps is None):
        raise ValueError("masks and maps must be given together (or both omitted)")
    if has_mask is not None and masks is None:
        raise ValueError("has_mask was given without masks and maps")
    if masks is not None and maps is not None:
        m, a = _pixel_inputs(masks, maps)
        if m.shape[0] != y.size:
            raise ValueError(f"masks hold {m.shape[0]} images but labels hold {y.size}")
        nonempty = m.reshape(m.shape[0], -1).any(axis=1)
        if has_mask is None:
            use = ~y | nonempty
        else:
            hm = _as_labels(has_mask, name="has_mask")
            if hm.shape != y.shape:
                raise ValueError(f"has_mask {hm.shape} and labels {y.shape} must match")
            use = hm & (~y | nonempty)
        bad_normal = use & ~y & nonempty
        if bad_normal.any():
            raise ValueError(
                f"{int(bad_normal.sum())} normal image(s) (label 0) have anomalous mask pixels,"
                f" e.g. index {int(np.flatnonzero(bad_normal)[0])}"
            )
        n_pix = int(np.count_nonzero(use))
        skipped = int(np.count_nonzero(y & ~use))
        if skipped:
            logger.info("%d anomalous image(s) without a mask: image-level only", skipped)
        if n_pix:
            m_use, a_use = m[use], a[use]
            if m_use.any() and not m_use.all():
                p_auroc = _pixel_auroc_checked(m_use, a_use)
                p_aupro = _aupro_checked(m_use, a_use, fpr_limit=0.3, connectivity=8)
            else:
                logger.info("pixel metrics skipped: evaluated masks hold only one pixel class")
    return DetectionMetrics(
        image_auroc=i_auroc,
        f1_max=f1,
        pixel_auroc=p_auroc,
        aupro=p_aupro,
        n_normal=n_norm,
        n_anomalous=n_anom,
        n_pixel_images=n_pix,
    )
