"""Tests for feddymem.data.generated.products: determinism, the mask contract, factory differences."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest

from feddymem.data.generated.products import (
    DEFECT_KINDS,
    FACTORIES,
    ProductError,
    render_pair,
    render_product,
)

SIZE = 128  # small renders keep the tests fast; the mixtures use 256


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_normal_render_is_deterministic_and_shaped() -> None:
    a = render_product("plant-a", _rng(3), size=SIZE)
    b = render_product("plant-a", _rng(3), size=SIZE)
    c = render_product("plant-a", _rng(4), size=SIZE)
    assert a.image.shape == (SIZE, SIZE, 3)
    assert a.image.dtype == np.uint8
    assert a.mask is None
    assert a.defect == "good"
    assert a.factory == "plant-a"
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)  # pose, light and noise are drawn per image


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


def test_defective_render_is_deterministic() -> None:
    a = render_product("plant-c", _rng(7), defect="scratch", size=SIZE)
    b = render_product("plant-c", _rng(7), defect="scratch", size=SIZE)
    assert a.mask is not None and b.mask is not None
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


def _look(image: np.ndarray) -> np.ndarray:
    """Belt colour (mean RGB of a 10-px border) and exposure (95th percentile grey level)."""
    border = np.concatenate([image[:10].reshape(-1, 3), image[-10:].reshape(-1, 3)], axis=0).astype(
        np.float64
    )
    return np.r_[border.mean(axis=0), np.percentile(image.mean(axis=-1), 95)]


def test_factories_differ_in_colour_and_brightness() -> None:
    looks = {
        name: np.array([_look(render_product(name, _rng(s), size=SIZE).image) for s in range(4)])
        for name in FACTORIES
    }
    means = {name: v.mean(axis=0) for name, v in looks.items()}
    for a, b in combinations(means, 2):
        distance = float(np.linalg.norm(means[a] - means[b]))
        assert distance > 15.0, f"{a} and {b} look alike: {means[a]} vs {means[b]}"
    # Within a factory the look is consistent (the shift is a property of the source).
    for name, values in looks.items():
        assert float(values.std(axis=0).max()) < 12.0, name


def test_custom_style_is_accepted() -> None:
    style = replace(FACTORIES["plant-a"], name="plant-x", tint_rgb=(0.9, 0.2, 0.2))
    red = render_product(style, _rng(0), size=SIZE)
    base = render_product("plant-a", _rng(0), size=SIZE)
    assert red.factory == "plant-x"
    assert red.image[..., 0].mean() > red.image[..., 1].mean()
    assert not np.array_equal(red.image, base.image)


def test_errors() -> None:
    with pytest.raises(ProductError, match="known factories: plant-a"):
        render_product("plant-z", _rng(0))
    with pytest.raises(ProductError, match="known kinds"):
        render_product("plant-a", _rng(0), defect="crack")
    with pytest.raises(ProductError, match="at least"):
        render_product("plant-a", _rng(0), size=16)
    with pytest.raises(TypeError, match="Generator"):
        render_product("plant-a", 0)  # type: ignore[arg-type]
