"""Dataset scores: a detector's scores over a whole sample list (image scores and labels, and
anomaly maps and masks when asked for), the metrics computed from them and what thresholds
flag on them. `Detector.score_samples`, `evaluate_with_scores` and `operating_points` are these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from feddymem.data import LoadReport, Sample
from feddymem.detect import threshold as thresholds
from feddymem.metrics import (
    DetectionMetrics,
    evaluate,
    operating_point,
    per_defect_image_auroc,
)

if TYPE_CHECKING:
    from feddymem.detect.base import Detector


@dataclass(frozen=True)
class DatasetScores:
    """Scores over a whole sample list, with what loading skipped."""

    samples: list[Sample]
    labels: np.ndarray  # (N,) int
    image_scores: np.ndarray  # (N,) float32
    anomaly_maps: np.ndarray | None  # (N, H, W) float32, kept only when asked for
    masks: np.ndarray | None  # (N, H, W) bool
    has_mask: np.ndarray | None  # (N,) bool
    report: LoadReport

    def per_defect(self) -> dict[str, dict[str, float | int]]:
        """Image AUROC of each ``test/<defect>`` folder against every good image
        (:func:`feddymem.metrics.per_defect_image_auroc`)."""
        return per_defect_image_auroc(
            self.labels, self.image_scores, [s.defect for s in self.samples]
        )

    def operating_point(self, threshold: float) -> dict[str, float | int]:
        """Recall, false-alarm rate, precision and F1 of the images flagged by ``threshold``
        (:func:`feddymem.metrics.operating_point`)."""
        return operating_point(self.labels, self.image_scores, threshold=threshold)


def score_samples(
    det: Detector,
    samples: Sequence[Sample],
    *,
    with_masks: bool = False,
    keep_maps: bool = False,
    map_stride: int = 1,
    progress: Callable[[int], None] | None = None,
) -> DatasetScores:
    """Score every sample with `det`; maps and masks are kept only when asked for (memory), the
    maps at every `map_stride`-th pixel each way (1: whole)."""
    report = LoadReport(loaded=0, skipped=[])
    kept: list[Sample] = []
    labels, scores, maps, masks, has_mask = [], [], [], [], []
    for batch in det.batches(samples, with_masks=with_masks, report=report):
        result = det.score(batch.images)
        kept.extend(batch.samples)
        labels.append(batch.labels.numpy())
        scores.append(result.image_scores.numpy())
        if keep_maps:
            strided = result.anomaly_maps[:, ::map_stride, ::map_stride]
            maps.append(strided.numpy().astype(np.float32))
        if with_masks:
            masks.append(batch.masks[:, 0].numpy() > 0.5)
            has_mask.append(batch.has_mask.numpy())
        if progress is not None:
            progress(len(batch.samples))
    if not kept:
        raise ValueError(f"no image could be loaded out of {len(samples)}: {report.skipped[:3]}")
    return DatasetScores(
        samples=kept,
        labels=np.concatenate(labels).astype(int),
        image_scores=np.concatenate(scores).astype(np.float32),
        anomaly_maps=np.concatenate(maps) if keep_maps else None,
        masks=np.concatenate(masks) if with_masks else None,
        has_mask=np.concatenate(has_mask) if with_masks else None,
        report=report,
    )


def evaluate_with_scores(
    det: Detector,
    samples: Sequence[Sample],
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[DetectionMetrics, DatasetScores]:
    """Image AUROC and F1-max (pixel AUROC and AUPRO where masks exist) of `det` on `samples`,
    plus the image scores they were computed from (maps dropped), for ROC curves and per-image
    reports."""
    with_masks = any(s.mask_path is not None for s in samples)
    scores = det.score_samples(
        samples, with_masks=with_masks, keep_maps=with_masks, progress=progress
    )
    metrics = evaluate(
        labels=scores.labels,
        image_scores=scores.image_scores,
        masks=scores.masks,
        maps=scores.anomaly_maps,
        has_mask=scores.has_mask,
    )
    return metrics, dataclasses.replace(scores, anomaly_maps=None, masks=None)


def operating_points(det: Detector, scores: DatasetScores) -> dict[str, Any]:
    """What `det`'s threshold flags on a labelled set (`at_threshold`, with the oracle's recall
    at the same false-alarm rate) and what its thresholds for fixed false-alarm rates flag
    (`at_far`, keyed by the nominal rate, each with its threshold)."""
    out: dict[str, Any] = {"at_threshold": None, "at_far": {}}
    if scores.labels.min() == scores.labels.max():
        return out  # recall and false alarms need both normal and anomalous images
    if det.threshold_ is not None:
        point = scores.operating_point(det.threshold_)
        normals = int(np.count_nonzero(scores.labels == 0))
        low, high = thresholds.false_alarm_interval(
            round(point["false_alarm_rate"] * normals), normals
        )
        out["at_threshold"] = {
            **point,
            "oracle_recall": thresholds.oracle_recall(
                scores.labels, scores.image_scores, threshold=det.threshold_
            ),
            "threshold": det.threshold_,
            "normals": normals,
            "false_alarm_rate_ci95": [low, high],
        }
    for rate, threshold in det.thresholds_at().items():
        out["at_far"][f"{rate:g}"] = {
            **scores.operating_point(threshold),
            "threshold": threshold,
        }
    return out


def site_threshold_metrics(
    det: Detector,
    scores: DatasetScores,
    *,
    calibration_normals: int,
    calibration_folds: int = 0,
    calibration_shift: float = 0.0,
) -> dict[str, float]:
    """What a federated site reports of its own threshold on its test set, flat floats for
    the wire: `threshold`, `recall_at_threshold`, `false_alarm_rate_at_threshold`,
    `precision_at_threshold`, the oracle's recall at that rate, the test normals the rate is
    counted on and its exact 95% interval, and what the threshold rests on (the normals, their
    cross-fit's folds, 0: held out, and the shift the cross-fitted scores were raised by);
    empty when there is no threshold or the set lacks either kind of image."""
    at = operating_points(det, scores)["at_threshold"]
    if at is None:
        return {}
    return {
        "threshold": float(at["threshold"]),
        "recall_at_threshold": float(at["recall"]),
        "false_alarm_rate_at_threshold": float(at["false_alarm_rate"]),
        "precision_at_threshold": float(at["precision"]),
        "oracle_recall_at_threshold": float(at["oracle_recall"]),
        "test_normals": float(at["normals"]),
        "false_alarm_rate_ci95_low": float(at["false_alarm_rate_ci95"][0]),
        "false_alarm_rate_ci95_high": float(at["false_alarm_rate_ci95"][1]),
        "calibration_normals": float(calibration_normals),
        "calibration_folds": float(calibration_folds),
        "calibration_shift": float(calibration_shift),
    }
