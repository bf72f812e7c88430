"""Rendering product images: a normal part, or a normal and a defective rendering of one part."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from feddymem.data.generated.products.defects import DEFECT_KINDS, DEFECTS
from feddymem.data.generated.products.factories import FACTORIES, FactoryStyle
from feddymem.data.generated.products.scene import (
    BoolArray,
    Scene,
    UInt8Array,
    draw_scene,
    render_scene,
)

MIN_SIZE = 64
"""Smallest image side rendered (below it the bolt holes are a few pixels)."""

_MAX_DRAWS = 20  # defect draws tried before giving up (a draw can miss the part's face)


class ProductError(ValueError):
    """An unknown factory or defect kind, or a size too small to render."""


@dataclass(frozen=True)
class ProductImage:
    """One rendered product image.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool defect mask, None for a normal image.
        defect: ``"good"`` or a key of :data:`DEFECT_KINDS`.
        factory: Name of the factory style that rendered it.
    """

    image: UInt8Array
    mask: BoolArray | None
    defect: str
    factory: str


def _style(factory: str | FactoryStyle) -> FactoryStyle:
    if isinstance(factory, FactoryStyle):
        return factory
    try:
        return FACTORIES[factory]
    except KeyError:
        raise ProductError(
            f"unknown factory {factory!r}; known factories: {', '.join(sorted(FACTORIES))}"
        ) from None


def render_pair(
    factory: str | FactoryStyle, rng: np.random.Generator, defect: str, *, size: int = 256
) -> tuple[ProductImage, ProductImage]:
    """Render one part twice, without and with a defect.

    The scene (pose, light, belt, noise) is drawn first, then the defect, so the normal image
    is the one :func:`render_product` gives for a generator in the same state with
    ``defect=None``.

    Args:
        factory: A key of :data:`FACTORIES` or a custom style.
        rng: Source of all randomness.
        defect: A key of :data:`DEFECT_KINDS`.
        size: Side of the square image, pixels (at least :data:`MIN_SIZE`).

    Returns:
        ``(normal, defective)``; the defective image equals the normal one outside its mask.

    Raises:
        ProductError: unknown factory or defect, too small a size, or no visible defect drawn
            in :data:`_MAX_DRAWS` tries.
    """
    style = _style(factory)
    if defect not in DEFECTS:
        raise ProductError(
            f"unknown defect kind {defect!r}; known kinds: {', '.join(DEFECT_KINDS)}"
        )
    scene = _checked_scene(style, size, rng)
    normal = render_scene(scene, None)
    pad = math.ceil(3.0 * style.blur_sigma) + 1
    for _ in range(_MAX_DRAWS):
        edit = DEFECTS[defect](scene, rng)
        if not edit.footprint.any():
            continue
        drawn = render_scene(scene, edit)
        # Blur spreads a change by a few pixels: bound it by the padded footprint.
        region = ndimage.binary_dilation(edit.footprint, iterations=pad)
        changed = (drawn != normal).any(axis=-1) & region
        mask = np.asarray(ndimage.binary_fill_holes(changed) & region)
        if mask.sum() < 4:
            continue
        defective = np.where(mask[..., None], drawn, normal).astype(np.uint8)
        return (
            ProductImage(image=normal, mask=None, defect="good", factory=style.name),
            ProductImage(image=defective, mask=mask, defect=defect, factory=style.name),
        )
    raise ProductError(
        f"{style.name}: no visible {defect!r} defect in {_MAX_DRAWS} draws (size {size})"
    )


def _checked_scene(style: FactoryStyle, size: int, rng: np.random.Generator) -> Scene:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if size < MIN_SIZE:
        raise ProductError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    return draw_scene(style, size, rng)


def render_product(
    factory: str | FactoryStyle,
    rng: np.random.Generator,
    *,
    defect: str | None = None,
    size: int = 256,
) -> ProductImage:
    """Render one image of the product as ``factory`` takes it.

    Args:
        factory: A key of :data:`FACTORIES` or a custom style.
        rng: Source of all randomness (scene first, then the defect).
        defect: None for a normal part, else a key of :data:`DEFECT_KINDS`.
        size: Side of the square image, pixels (at least :data:`MIN_SIZE`).

    Returns:
        The image, its mask (None when normal), the defect and factory names.

    Raises:
        ProductError: see :func:`render_pair`.
    """
    if defect is None:
        style = _style(factory)
        scene = _checked_scene(style, size, rng)
        return ProductImage(
            image=render_scene(scene, None), mask=None, defect="good", factory=style.name
        )
    return render_pair(factory, rng, defect, size=size)[1]
