"""Image-level metrics: hand-computed AUROC and F1-max, per-defect AUROC, a threshold's outcome."""

from __future__ import annotations

import numpy as np
import pytest

from feddymem.metrics.image import f1_max, image_auroc, operating_point, per_defect_image_auroc


def test_image_auroc_hand_computed() -> None:
    # Positive pairs ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc(np.array([False, True]), np.array([1, 1])) == pytest.approx(0.5)


def test_f1_max_hand_computed() -> None:
    # Thresholds 0.8: F1 2/3; 0.4: 1/2; 0.35: P 2/3, R 1 -> 0.8; 0.1: 2/3.
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert f1_max([0, 1, 1], [0.0, 1.0, 2.0]) == pytest.approx(1.0)


def test_single_class_errors() -> None:
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no anomalous"):
        f1_max([0, 0], [0.1, 0.2])


def test_per_defect_image_auroc_scores_each_defect_against_every_normal_image() -> None:
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.9, 0.15, 0.3]
    defects = ["good", "good", "crack", "uneven", "uneven"]
    out = per_defect_image_auroc(labels, scores, defects)
    # crack beats both normals; uneven wins 3 of its 4 pairs (0.15 < 0.2)
    assert out == {"crack": {"n": 1, "image_auroc": 1.0}, "uneven": {"n": 2, "image_auroc": 0.75}}
    with pytest.raises(ValueError, match="defects has 4 entries for 5 labels"):
        per_defect_image_auroc(labels, scores, defects[:4])


def test_operating_point_counts_what_a_threshold_flags() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.2, 0.95, 0.5, 0.3])
    # flagged: score > 0.5 strictly (as predict decides): 0.9 (normal) and 0.95 (anomalous)
    point = operating_point(labels, scores, threshold=0.5)
    assert point["flagged"] == 2
    assert point["recall"] == pytest.approx(1 / 3)
    assert point["false_alarm_rate"] == pytest.approx(1 / 4)
    assert point["precision"] == pytest.approx(1 / 2)
    assert point["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    nothing = operating_point(labels, scores, threshold=1.0)
    assert nothing["flagged"] == 0 and nothing["precision"] == 0.0 and nothing["f1"] == 0.0
    with pytest.raises(ValueError, match="finite"):
        operating_point(labels, scores, threshold=float("nan"))
    with pytest.raises(ValueError, match="both normal and anomalous"):
        operating_point(np.zeros(3, dtype=int), scores[:3], threshold=0.5)
