"""Image-level metrics: image AUROC (overall and per defect), F1-max, a fixed threshold's outcome."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import precision_recall_curve, roc_auc_score

from feddymem.metrics.inputs import image_inputs, require_both_classes


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
    y, s = image_inputs(labels, scores)
    require_both_classes(y, what="image AUROC")
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
    y, s = image_inputs(labels, scores)
    require_both_classes(y, what="per-defect image AUROC")
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
    y, s = image_inputs(labels, scores)
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
    y, s = image_inputs(labels, scores)
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
