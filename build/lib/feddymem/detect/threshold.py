"""Thresholds from normal images only: which normals set them and how.

A site has no defects to tune on, so its threshold is a high quantile of the image scores of
normal images the memory did not see (a held-out share, or out-of-fold scores), and the heat
maps' floor the median of those images' anomaly maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from feddymem.data import Sample

FLOOR_STRIDE = 4
"""The map floor is the median of every FLOOR_STRIDE-th pixel (each way) of the normals' maps:
the maps are smooth (upsampled, blurred), and a sixteenth of them keeps the memory small."""


def split_calibration(
    normals: Sequence[Sample], *, fraction: float, seed: int, minimum: int = 10
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of the normals (seeded) for the threshold; none when too few."""
    n = len(normals)
    n_calib = round(n * fraction)
    if n < minimum or n_calib < 1:
        return list(normals), []
    order = np.random.default_rng(seed).permutation(n)
    calib = {int(i) for i in order[:n_calib]}
    return (
        [s for i, s in enumerate(normals) if i not in calib],
        [s for i, s in enumerate(normals) if i in calib],
    )


def quantile_threshold(scores: np.ndarray, *, quantile: float) -> float:
    """The `quantile` of normal images' image scores (N,): the empirical threshold."""
    return float(np.quantile(scores, quantile))


def map_floor(maps: np.ndarray) -> float:
    """The median of normal images' anomaly-map values (any shape): where heat maps start."""
    return float(np.median(maps))
