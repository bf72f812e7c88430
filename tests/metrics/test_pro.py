"""AUPRO and the PRO curve against a brute-force reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from feddymem.metrics.pixel import pixel_auroc
from feddymem.metrics.pro import aupro, pro_curve


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
