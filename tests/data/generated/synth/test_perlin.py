"""Perlin noise and the Perlin blend: region area, noise range and seeding."""

from __future__ import annotations

import numpy as np
import pytest
from tests.data.generated.synth.synthkit import IMAGES, N_SEEDS

from feddymem.data.generated.synth.perlin import perlin_blend, perlin_noise


def test_perlin_region_area_is_bounded() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        _, mask = perlin_blend(image, np.random.default_rng(seed))
        assert 0.01 <= mask.mean() <= 0.5


def test_perlin_noise_shape_range_and_seed() -> None:
    noise = perlin_noise((40, 70), (4, 8), np.random.default_rng(1), angle=0.6)
    assert noise.shape == (40, 70)
    assert noise.dtype == np.float64
    assert np.isfinite(noise).all()
    assert -1.5 < noise.min() < 0.0 < noise.max() < 1.5
    again = perlin_noise((40, 70), (4, 8), np.random.default_rng(1), angle=0.6)
    assert np.array_equal(noise, again)
    other = perlin_noise((40, 70), (4, 8), np.random.default_rng(2), angle=0.6)
    assert not np.array_equal(noise, other)
    with pytest.raises(ValueError, match="positive"):
        perlin_noise((40, 70), (0, 8), np.random.default_rng(1))
