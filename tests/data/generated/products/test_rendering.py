"""Rendering products: determinism, shapes and the errors of render_product."""

from __future__ import annotations

import numpy as np
import pytest

from feddymem.data.generated.products.rendering import ProductError, render_product

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


def test_defective_render_is_deterministic() -> None:
    a = render_product("plant-c", _rng(7), defect="scratch", size=SIZE)
    b = render_product("plant-c", _rng(7), defect="scratch", size=SIZE)
    assert a.mask is not None and b.mask is not None
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_errors() -> None:
    with pytest.raises(ProductError, match="known factories: plant-a"):
        render_product("plant-z", _rng(0))
    with pytest.raises(ProductError, match="known kinds"):
        render_product("plant-a", _rng(0), defect="crack")
    with pytest.raises(ProductError, match="at least"):
        render_product("plant-a", _rng(0), size=16)
    with pytest.raises(TypeError, match="Generator"):
        render_product("plant-a", 0)  # type: ignore[arg-type]
