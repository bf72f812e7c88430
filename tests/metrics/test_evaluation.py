"""evaluate(): image and pixel metrics of one test set, masks missing or empty, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feddymem.metrics.evaluation import DetectionMetrics, evaluate
from feddymem.metrics.image import f1_max, image_auroc
from feddymem.metrics.pixel import pixel_auroc
from feddymem.metrics.pro import aupro


def _dataset(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[3, 2:6, 2:6] = True
    masks[4, 8:12, 3:5] = True  # image 5 is anomalous with an empty (missing) mask
    maps = rng.random(masks.shape) + 0.7 * masks
    return labels, scores, masks, maps


def test_evaluate_image_only() -> None:
    labels, scores, _, _ = _dataset(np.random.default_rng(0))
    result = evaluate(labels=labels, image_scores=scores)
    assert result.image_auroc == pytest.approx(image_auroc(labels, scores))
    assert result.f1_max == pytest.approx(f1_max(labels, scores))
    assert result.pixel_auroc is None and result.aupro is None
    assert (result.n_normal, result.n_anomalous, result.n_pixel_images) == (3, 3, 0)


def test_evaluate_skips_anomalous_images_without_mask() -> None:
    labels, scores, masks, maps = _dataset(np.random.default_rng(0))
    result = evaluate(labels=labels, image_scores=scores, masks=masks, maps=maps)
    keep = [0, 1, 2, 3, 4]
    assert result.n_pixel_images == 5
    assert result.pixel_auroc == pytest.approx(pixel_auroc(masks[keep], maps[keep]))
    assert result.aupro == pytest.approx(aupro(masks[keep], maps[keep]))

    has_mask = np.array([True, False, True, True, False, True])
    result = evaluate(labels=labels, image_scores=scores, masks=masks, maps=maps, has_mask=has_mask)
    keep = [0, 2, 3]
    assert result.n_pixel_images == 3
    assert result.pixel_auroc == pytest.approx(pixel_auroc(masks[keep], maps[keep]))


def test_evaluate_without_anomalous_pixels_gives_none() -> None:
    labels, scores, masks, maps = _dataset(np.random.default_rng(0))
    masks[:] = False
    result = evaluate(labels=labels, image_scores=scores, masks=masks, maps=maps)
    assert result.pixel_auroc is None and result.aupro is None
    assert result.n_pixel_images == 3  # the normal images


def test_evaluate_errors() -> None:
    labels, scores, masks, maps = _dataset(np.random.default_rng(0))
    with pytest.raises(ValueError, match="together"):
        evaluate(labels=labels, image_scores=scores, masks=masks)
    with pytest.raises(ValueError, match="has_mask"):
        evaluate(labels=labels, image_scores=scores, has_mask=np.ones(6, dtype=bool))
    with pytest.raises(ValueError, match="images"):
        evaluate(labels=labels, image_scores=scores, masks=masks[:5], maps=maps[:5])
    bad = masks.copy()
    bad[0, 0, 0] = True
    with pytest.raises(ValueError, match="normal image"):
        evaluate(labels=labels, image_scores=scores, masks=bad, maps=maps)
    with pytest.raises(ValueError, match="only one class"):
        evaluate(labels=np.zeros(6), image_scores=scores)


def test_detection_metrics_is_frozen_and_serialisable() -> None:
    labels, scores, masks, maps = _dataset(np.random.default_rng(0))
    result = evaluate(labels=labels, image_scores=scores, masks=masks, maps=maps)
    assert isinstance(result, DetectionMetrics)
    d = result.as_dict()
    assert list(d) == [
        "image_auroc",
        "f1_max",
        "pixel_auroc",
        "aupro",
        "n_normal",
        "n_anomalous",
        "n_pixel_images",
    ]
    assert all(isinstance(v, float | int) for v in d.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.image_auroc = 0.0  # type: ignore[misc]
