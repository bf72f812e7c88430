"""Exact pixel AUROC against scikit-learn, with ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from feddymem.metrics.pixel import pixel_auroc


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
