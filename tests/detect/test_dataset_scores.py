from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from feddymem.config import FeatureConfig
from feddymem.data import LoadReport, Sample, scan
from feddymem.detect.base import Detector
from feddymem.detect.dataset_scores import (
    DatasetScores,
    evaluate_with_scores,
    operating_points,
    score_samples,
)


class _Brightness(Detector):
    """Patch score = how far a cell's mean brightness is from mid-grey: no backbone needed."""

    kind = "brightness"

    def _is_fitted(self) -> bool:
        return True

    def score_patches(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(dim=1, keepdim=True)
        return (torch.nn.functional.avg_pool2d(grey, 8)[:, 0] - 0.5).abs()

    def _state(self) -> dict[str, Any]:
        return {}


def _detector() -> _Brightness:
    det = _Brightness(FeatureConfig(image_size=64, batch_size=4, blur_sigma=1.0))
    det.image_hw_ = (64, 64)
    return det


def test_score_samples_keeps_what_is_asked_and_counts_progress(texture_tree: Path) -> None:
    det = _detector()
    test = scan(texture_tree).test
    seen: list[int] = []
    scores = score_samples(
        det, test, with_masks=True, keep_maps=True, map_stride=2, progress=seen.append
    )
    assert sum(seen) == len(test) == len(scores.samples)
    assert scores.image_scores.dtype == np.float32 and scores.image_scores.shape == (len(test),)
    assert scores.anomaly_maps is not None and scores.anomaly_maps.shape == (len(test), 32, 32)
    assert scores.masks is not None and scores.masks.shape == (len(test), 64, 64)
    assert scores.has_mask is not None and scores.has_mask.all()
    assert list(scores.labels) == [s.label for s in test]
    # the detector's method is this function
    same = det.score_samples(test)
    assert np.array_equal(same.image_scores, scores.image_scores)
    assert same.anomaly_maps is None and same.masks is None


def test_evaluate_with_scores_drops_the_maps(texture_tree: Path) -> None:
    det = _detector()
    metrics, scores = evaluate_with_scores(det, scan(texture_tree).test)
    assert 0.0 <= metrics.image_auroc <= 1.0 and metrics.pixel_auroc is not None
    assert scores.anomaly_maps is None and scores.masks is None
    assert metrics == det.evaluate(scan(texture_tree).test)


def test_score_samples_refuses_when_nothing_loads(tmp_path: Path) -> None:
    missing = [Sample(path=tmp_path / "none.png", label=0, defect="good")]
    with pytest.raises(ValueError, match="no image could be loaded"):
        score_samples(_detector(), missing)


def _scores(labels: list[int], image_scores: list[float]) -> DatasetScores:
    return DatasetScores(
        samples=[
            Sample(path=Path(f"{i}.png"), label=lab, defect="good" if lab == 0 else "spot")
            for i, lab in enumerate(labels)
        ],
        labels=np.asarray(labels),
        image_scores=np.asarray(image_scores, dtype=np.float32),
        anomaly_maps=None,
        masks=None,
        has_mask=None,
        report=LoadReport(loaded=len(labels), skipped=[]),
    )


def test_operating_points_at_the_threshold_and_fixed_rates() -> None:
    det = _detector()
    scores = _scores([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    # no threshold and no calibration scores: nothing to report but the keys
    assert operating_points(det, scores) == {"at_threshold": None, "at_far": {}}
    det.threshold_ = 0.4
    det.calibration_scores_ = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    out = operating_points(det, scores)
    at = out["at_threshold"]
    assert at["threshold"] == 0.4 and at["normals"] == 4
    assert at["recall"] == 1.0 and at["false_alarm_rate"] == 0.25
    low, high = at["false_alarm_rate_ci95"]
    assert low <= 0.25 <= high
    assert set(out["at_far"]) == {f"{r:g}" for r in det.thresholds_at()}
    assert det.operating_points(scores) == out
    # one class only: recall and false alarms are undefined
    one_class = _scores([0, 0], [0.1, 0.2])
    assert operating_points(det, one_class) == {"at_threshold": None, "at_far": {}}
    assert scores.per_defect()["spot"]["n"] == 2
