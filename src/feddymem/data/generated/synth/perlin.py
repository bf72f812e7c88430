"""DRAEM-style anomalies: a Perlin-noise region blended with a texture, and the noise itself."""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import resize

from feddymem.data.generated.synth.anomaly import (
    MAX_DRAWS,
    Anomaly,
    FloatArray,
    SynthesisError,
    UInt8Array,
    check_image,
    check_inputs,
    finalize,
    is_gray,
    to_gray,
)

# Perlin blend: noise threshold, accepted mask area fraction, texture opacity beta, largest
# lattice exponent k (resolution 2^k cells per axis) and smallest cell size in pixels.
_PERLIN_THRESHOLD = 0.5
_PERLIN_AREA = (0.01, 0.5)
_PERLIN_OPACITY = (0.1, 1.0)
_PERLIN_MAX_EXPONENT = 5
_PERLIN_MIN_CELL = 8


def _fade(t: FloatArray) -> FloatArray:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3 (zero first and second derivative)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[int, int],
    rng: np.random.Generator,
    *,
    angle: float = 0.0,
) -> FloatArray:
    """Two-dimensional Perlin (gradient) noise.

    Random unit gradients sit on a lattice whose cells are ``H / Ry`` by ``W / Rx`` pixels,
    turned by ``angle`` about the image centre; each pixel interpolates the dot products with
    its four cell corners by the quintic fade curve.  Scaled by sqrt(2) so the values span
    roughly [-1, 1].

    Args:
        shape: ``(H, W)`` of the output.
        res: ``(Ry, Rx)`` lattice cells across the rows and the columns, each at least 1.
        rng: Source of the gradient directions.
        angle: Rotation of the lattice in radians (0: cells aligned with the pixel grid).

    Returns:
        ``(H, W)`` float64 noise.
    """
    height, width = shape
    ry, rx = res
    if height < 1 or width < 1 or ry < 1 or rx < 1:
        raise ValueError(f"shape and res must be positive, got shape={shape} res={res}")
    # Pixel centres about the image centre, rotated, then measured in lattice cells.
    py = np.arange(height)[:, None] + 0.5 - height / 2.0
    px = np.arange(width)[None, :] + 0.5 - width / 2.0
    cos, sin = math.cos(angle), math.sin(angle)
    y = (py * cos - px * sin) * (ry / height)
    x = (py * sin + px * cos) * (rx / width)
    y = y - math.floor(float(y.min()))
    x = x - math.floor(float(x.min()))
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - iy, x - ix
    directions = rng.uniform(0.0, 2.0 * math.pi, size=(int(iy.max()) + 2, int(ix.max()) + 2))
    grad_y, grad_x = np.sin(directions), np.cos(directions)

    def corner(dy: int, dx: int) -> FloatArray:
        rows, cols = iy + dy, ix + dx
        return grad_y[rows, cols] * (fy - dy) + grad_x[rows, cols] * (fx - dx)

    u, v = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1.0 - v) + corner(0, 1) * v
    bottom = corner(1, 0) * (1.0 - v) + corner(1, 1) * v
    return np.asarray(math.sqrt(2.0) * (top * (1.0 - u) + bottom * u), dtype=np.float64)


def _random_res(shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Lattice resolution (2^ky, 2^kx), cells no smaller than ``_PERLIN_MIN_CELL`` pixels."""
    exps = []
    for side in shape:
        top = math.floor(math.log2(max(side / _PERLIN_MIN_CELL, 1.0)))
        exps.append(int(rng.integers(0, min(_PERLIN_MAX_EXPONENT, top) + 1)))
    return 2 ** exps[0], 2 ** exps[1]


def _random_texture(shape: tuple[int, int], rng: np.random.Generator, *, gray: bool) -> FloatArray:
    """A random texture: two random colours mixed by Perlin noise, plus pixel noise.

    Returns:
        ``(H, W, 3)`` float64 in 0..255.
    """
    colours = rng.uniform(0.0, 255.0, size=(2, 3))
    if gray:
        colours = to_gray(colours)
    mix = (perlin_noise(shape, _random_res(shape, rng), rng) + 1.0) / 2.0
    mix = np.clip(mix, 0.0, 1.0)[..., None]
    texture = colours[0] * (1.0 - mix) + colours[1] * mix
    grain = rng.normal(0.0, rng.uniform(0.0, 20.0), size=(*shape, 1 if gray else 3))
    return np.clip(texture + grain, 0.0, 255.0)


def _prepare_texture(
    texture: UInt8Array, shape: tuple[int, int], rng: np.random.Generator, *, gray: bool
) -> FloatArray:
    """Resize a texture image to ``shape``, flip it at random, match grey images.

    Returns:
        ``(H, W, 3)`` float64 in 0..255.
    """
    values = texture.astype(np.float64)
    if values.shape[:2] != shape:
        values = resize(values, (*shape, 3), order=1, preserve_range=True, anti_aliasing=True)
    if rng.random() < 0.5:
        values = values[::-1]
    if rng.random() < 0.5:
        values = values[:, ::-1]
    if gray:
        values = to_gray(values)
    return np.ascontiguousarray(values)


def perlin_blend(
    image: UInt8Array,
    rng: np.random.Generator,
    *,
    texture: UInt8Array | None = None,
) -> Anomaly:
    """DRAEM-style anomaly: a Perlin-noise region blended with a texture.

    The noise has 2^k lattice cells per axis (k drawn per axis, cells at least 8 px, k <= 5),
    its lattice turned by a random angle, and is thresholded at 0.5; draws whose region covers
    less than 1 % or more than 50 % of the image are redrawn.  Inside the region
    ``out = (1 - beta) * image + beta * texture``
    with opacity ``beta`` drawn from [0.1, 1.0).

    Args:
        image: ``(H, W, 3)`` uint8 normal image, both sides at least :data:`MIN_SIDE`.
        rng: Source of all randomness.
        texture: ``(H', W', 3)`` uint8 texture image, resized to ``(H, W)`` and flipped at
            random; when None a random texture (two random colours mixed by Perlin noise, plus
            grain) is made.

    Returns:
        The blended image; the mask is the thresholded noise region.
    """
    check_inputs(image, rng)
    if texture is not None:
        check_image(texture, name="texture")
    shape = (int(image.shape[0]), int(image.shape[1]))
    lo, hi = _PERLIN_AREA
    for _ in range(MAX_DRAWS):
        angle = rng.uniform(0.0, math.pi)
        noise = perlin_noise(shape, _random_res(shape, rng), rng, angle=angle)
        region = noise > _PERLIN_THRESHOLD
        if lo <= region.mean() <= hi:
            break
    else:
        raise SynthesisError(f"no Perlin region of {lo:.0%}-{hi:.0%} area in {MAX_DRAWS} draws")
    gray = is_gray(image)
    if texture is None:
        pattern = _random_texture(shape, rng, gray=gray)
    else:
        pattern = _prepare_texture(texture, shape, rng, gray=gray)
    beta = rng.uniform(*_PERLIN_OPACITY)
    proposal = (1.0 - beta) * image.astype(np.float64) + beta * pattern
    return finalize(image, proposal, region)
