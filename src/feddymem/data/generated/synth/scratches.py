"""Scratches: thin curved lines, darker or brighter than the local background."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from feddymem.data.generated.synth.anomaly import (
    LUMA,
    Anomaly,
    BoolArray,
    UInt8Array,
    check_inputs,
    finalize,
    is_gray,
    sign_with_headroom,
    to_gray,
)

# Scratch: number of lines, length as a fraction of the shorter side, sideways bend of the
# Bezier control points as a fraction of the length, width in pixels, intensity offset.
_SCRATCH_LINES = (1, 3)
_SCRATCH_LENGTH = (0.2, 0.6)
_SCRATCH_BEND = 0.3
_SCRATCH_WIDTH = (1, 4)
_SCRATCH_OFFSET = (40.0, 90.0)


def _footprint(width: int) -> BoolArray:
    """A round ``width x width`` structuring element (a single pixel for width 1)."""
    centre = (width - 1) / 2.0
    grid = np.arange(width) - centre
    return np.asarray(np.hypot(grid[:, None], grid[None, :]) <= width / 2.0)


def _bezier_line(shape: tuple[int, int], rng: np.random.Generator, *, width: int) -> BoolArray:
    """Pixels of one random cubic Bezier curve of ``width`` px, starting inside the image."""
    h, w = shape
    length = rng.uniform(*_SCRATCH_LENGTH) * min(h, w)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    start = rng.uniform((0.0, 0.0), (h - 1.0, w - 1.0))
    chord = length * np.array([math.sin(angle), math.cos(angle)])
    normal = np.array([chord[1], -chord[0]]) / length
    bends = rng.uniform(-_SCRATCH_BEND, _SCRATCH_BEND, size=2) * length
    points = np.stack(
        [
            start,
            start + chord / 3.0 + normal * bends[0],
            start + 2.0 * chord / 3.0 + normal * bends[1],
            start + chord,
        ]
    )  # (4, 2) control points
    # Three samples per pixel of chord length keep the rounded centre line free of gaps.
    t = np.linspace(0.0, 1.0, math.ceil(3.0 * length) + 2)[:, None]
    weights = np.hstack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])
    curve = np.rint(weights @ points).astype(np.int64)  # (T, 2)
    inside = (curve[:, 0] >= 0) & (curve[:, 0] < h) & (curve[:, 1] >= 0) & (curve[:, 1] < w)
    line = np.zeros(shape, dtype=bool)
    line[curve[inside, 0], curve[inside, 1]] = True
    if width > 1:
        line = ndimage.binary_dilation(line, structure=_footprint(width))
    return np.asarray(line, dtype=bool)


def scratch(image: UInt8Array, rng: np.random.Generator) -> Anomaly:
    """One to three thin curved scratches, darker or brighter than the local background.

    Each scratch is a cubic Bezier curve (chord 20-60 % of the shorter side, bent sideways by
    up to 30 % of its length) of width 1-4 px.  Its pixels take the local background (the
    image smoothed with a Gaussian of sigma 3 px) shifted by 40-90 grey levels, brighter on
    dark backgrounds, darker on bright ones, either way in between.

    Args:
        image: ``(H, W, 3)`` uint8 normal image, both sides at least :data:`MIN_SIDE`.
        rng: Source of all randomness.

    Returns:
        The scratched image; the mask is the union of the line pixels.
    """
    check_inputs(image, rng)
    shape = (int(image.shape[0]), int(image.shape[1]))
    background = ndimage.gaussian_filter(image.astype(np.float64), sigma=(3.0, 3.0, 0.0))
    proposal = image.astype(np.float64)
    region = np.zeros(shape, dtype=bool)
    n_lines = int(rng.integers(_SCRATCH_LINES[0], _SCRATCH_LINES[1] + 1))
    for _ in range(n_lines):
        width = int(rng.integers(_SCRATCH_WIDTH[0], _SCRATCH_WIDTH[1] + 1))
        line = _bezier_line(shape, rng, width=width)
        local = background[line]  # (N, 3)
        sign = sign_with_headroom(float((local @ LUMA).mean()), rng)
        proposal[line] = local + sign * rng.uniform(*_SCRATCH_OFFSET)
        region |= line
    if is_gray(image):
        proposal = to_gray(proposal)
    return finalize(image, proposal, region)
