"""Behaviour of feddymem.metrics: hand-computed values, brute-force references, input errors."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from feddymem.metrics import (
    DetectionMetrics,
    aupro,
    evaluate,
    f1_max,
    image_auroc,
    operating_point,
    per_defect_image_auroc,
    pixel_auroc,
    pro_curve,
)


def brute_force_aupro(
    masks: np.ndarray, maps: np.ndarray, fpr_limit: float, connectivity: int = 8
) -> float:
    """Reference: one threshold at a time, regions one at a time, explicit interpolation."""
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    regions = []
    for i in range(masks.shape[0]):
        labelled, n = ndimage.label(masks[i], structure=structure)
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal_scores = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = float(np.mean(normal_scores >= t))
        pro = float(np.mean([np.mean(maps[i][region] >= t) for i, region in regions]))
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < fpr_limit:
            y_cut = y0 + (fpr_limit - x0) / (x1 - x0) * (y1 - y0)
            area += (fpr_limit - x0) * (y0 + y_cut) / 2
            break
    return area / fpr_limit


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Random blob-shaped masks: a few seeds dilated into regions."""
    seeds = rng.random((n, h, w)) < 0.004
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1] = True
    return ndimage.binary_dilation(seeds, structure=st, iterations=3)


# --------------------------------------------------------------------------- image level


def test_image_auroc_hand_computed() -> None:
    # Positive pairs ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4.
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc(np.array([False, True]), np.array([1, 1])) == pytest.approx(0.5)


def test_f1_max_hand_computed() -> None:
    # Thresholds 0.8: F1 2/3; 0.4: 1/2; 0.35: P 2/3, R 1 -> 0.8; 0.1: 2/3.
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert f1_max([0, 1, 1], [0.0, 1.0, 2.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("fn", [image_auroc, f1_max])
def test_image_metrics_reject_bad_input(fn: Callable[..., float]) -> None:
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="same shape"):
        fn([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        fn([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


def test_single_class_errors() -> None:
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no anomalous"):
        f1_max([0, 0], [0.1, 0.2])


# --------------------------------------------------------------------------- pixel AUROC


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 7, 9)) < 0.2
    maps = rng.integers(0, 5, size=masks.shape) + masks * rng.integers(0, 2, size=masks.shape)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(masks.astype(np.uint8), maps.astype(np.float32)) == pytest.approx(
        expected, abs=1e-12
    )


def test_pixel_inputs_rejected() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1, 1] = True
    maps = np.zeros((2, 4, 4))
    for fn in (pixel_auroc, aupro):
        with pytest.raises(ValueError, match="only 0 and 1"):
            fn(masks.astype(np.uint8) * 255, maps)
        with pytest.raises(ValueError, match="3-D"):
            fn(masks[0], maps[0])
        with pytest.raises(ValueError, match="same shape"):
            fn(masks, maps[:, :3])
        bad = maps.copy()
        bad[1, 2, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            fn(masks, bad)
        with pytest.raises(ValueError, match="no anomalous pixels"):
            fn(np.zeros_like(masks), maps)
        with pytest.raises(ValueError, match="no normal pixels"):
            fn(np.ones_like(masks), maps)


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("seed", range(12))
def test_aupro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 4)), 6, 7
    masks = rng.random((n, h, w)) < rng.uniform(0.1, 0.5)
    masks[0, 0, 0], masks[0, -1, -1] = True, False
    maps = rng.integers(0, int(rng.integers(2, 10)), size=masks.shape) + masks * rng.random()
    for limit in (0.05, 0.3, 0.77, 1.0):
        for connectivity in (4, 8):
            got = aupro(masks, maps, fpr_limit=limit, connectivity=connectivity)
            want = brute_force_aupro(masks, maps, limit, connectivity)
            assert got == pytest.approx(want, abs=1e-12), (limit, connectivity)


def test_aupro_weights_regions_not_pixels() -> None:
    # One fully detected 1-pixel region, one missed 3-pixel region: PRO = 0.5 at FPR 0.
    masks = np.array([[[1, 0, 1, 1, 1, 0, 0, 0, 0, 0]]], dtype=bool)
    maps = np.array([[[5, 1, 0, 0, 0, 1, 1, 1, 1, 1]]], dtype=float)
    assert aupro(masks, maps) == pytest.approx(0.5)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_interpolates_at_the_limit() -> None:
    # One normal and one anomalous pixel tied: the curve is the diagonal (0,0)-(1,1), so the
    # normalised area up to L is L / 2.
    masks = np.array([[[False, True]]])
    maps = np.array([[[1.0, 1.0]]])
    for limit in (0.1, 0.3, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(limit / 2)


def test_aupro_connectivity() -> None:
    masks = np.array([[[1, 0, 0], [0, 1, 1]]], dtype=bool)
    maps = np.array([[[5.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    # 8-connected: one region of 3, a third above -> 1/3. 4-connected: {1 px} found, {2 px} not.
    assert aupro(masks, maps, connectivity=8) == pytest.approx(1 / 3)
    assert aupro(masks, maps, connectivity=4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="connectivity"):
        aupro(masks, maps, connectivity=6)


def test_aupro_perfect_inverted_and_random() -> None:
    rng = np.random.default_rng(0)
    masks = blob_masks(rng, 40, 64, 64)
    assert masks.any()
    noise = rng.random(masks.shape)
    assert aupro(masks, masks + 0.5 * noise) == pytest.approx(1.0, abs=1e-9)
    assert aupro(masks, -(masks + 0.5 * noise)) == pytest.approx(0.0, abs=1e-12)
    # Random scores: PRO(t) ≈ FPR(t), so the area up to L is L^2 / 2, normalised L / 2.
    assert aupro(masks, noise, fpr_limit=0.3) == pytest.approx(0.15, abs=0.01)
    assert aupro(masks, noise, fpr_limit=1.0) == pytest.approx(0.5, abs=0.02)


def test_aupro_rejects_bad_limit() -> None:
    masks = np.array([[[False, True]]])
    for limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            aupro(masks, masks * 1.0, fpr_limit=limit)


def test_pro_curve_shape_and_area() -> None:
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 4, 32, 32)
    maps = rng.random(masks.shape) + masks
    fpr, pro = pro_curve(masks, maps)
    assert fpr.shape == pro.shape
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    area = float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2))
    assert area == pytest.approx(aupro(masks, maps, fpr_limit=1.0), abs=1e-12)


def test_pixel_metrics_scale() -> None:
    # 4M pixels: values in range (speed is measured by benchmarks, not asserted here).
    rng = np.random.default_rng(0)
    masks = blob_masks(rng, 16, 500, 500)
    maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    value = pixel_auroc(masks, maps)
    pro = aupro(masks, maps)
    assert 0.8 < value < 1.0 and 0.0 < pro < 1.0


# --------------------------------------------------------------------------- evaluate


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
