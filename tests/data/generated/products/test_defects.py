"""Product defects: each changes pixels only inside its mask, on every factory."""

from __future__ import annotations

import numpy as np
import pytest

from feddymem.data.generated.products.defects import DEFECT_KINDS
from feddymem.data.generated.products.factories import FACTORIES
from feddymem.data.generated.products.rendering import render_pair, render_product

SIZE = 128  # small renders keep the tests fast; the mixtures use 256


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defects_change_pixels_only_inside_their_masks(factory: str, kind: str) -> None:
    for seed in range(2):
        normal, defective = render_pair(factory, _rng(seed), kind, size=SIZE)
        mask = defective.mask
        assert mask is not None
        assert mask.dtype == np.bool_
        assert mask.shape == (SIZE, SIZE)
        assert mask.sum() >= 4
        assert defective.defect == kind
        # Outside the mask: exactly the normal rendering of the same scene.
        np.testing.assert_array_equal(defective.image[~mask], normal.image[~mask])
        # Inside: the defect is visible (holes filled in the mask may be unchanged pixels).
        changed = (defective.image != normal.image).any(axis=-1)
        assert changed[mask].mean() > 0.8
        # The normal half is what render_product gives for the same seed.
        alone = render_product(factory, _rng(seed), size=SIZE)
        np.testing.assert_array_equal(alone.image, normal.image)
