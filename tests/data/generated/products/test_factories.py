"""Factories: each images the product its own way; custom styles render too."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np

from feddymem.data.generated.products.factories import FACTORIES
from feddymem.data.generated.products.rendering import render_product

SIZE = 128  # small renders keep the tests fast; the mixtures use 256


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


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
