"""Synthetic anomalies with exact pixel masks, and pixel-labelled test sets built from them.

Real pixel-labelled sets are scarce, so test sets are also made by inserting synthetic defects
into real normal images.  Four kinds are provided, each a pure function of an image and a
``numpy.random.Generator``:

* ``cutpaste``: a jittered rectangle (or a thin rotated "scar") cut from the image or from
  another normal image and pasted elsewhere.
* ``perlin``: a thresholded Perlin-noise region blended with a texture at opacity ``beta``.
* ``scratch``: a few thin curved lines, darker or brighter than the local background.
* ``blob``: an irregular, noise-deformed ellipse filled with shifted intensity or noise.

Mask contract shared by all kinds (checked by the tests over many seeds):

* the mask is ``(H, W)`` bool and never empty;
* outside the mask the output equals the input exactly (hard edges, no blend border);
* inside the mask every pixel differs from the input by at least :data:`MIN_CHANGE` grey levels
  in at least one channel.  Where a draw leaves a pixel of the anomaly region almost unchanged
  (a pasted patch matching its background, a saturated pixel that cannot get brighter), that
  pixel is pushed by ``MIN_CHANGE`` towards the side with headroom, so the mask is the whole
  solid region, as hand-drawn ground truth is, and no masked pixel is invisible.

Grey images (three equal channels) receive grey anomalies, so colour never gives a defect away.

:func:`synthesize_dataset` writes such anomalies into an MVTec-layout tree labelled synthetic by
its marker file ``feddymem_synth.json``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from skimage.transform import resize

from feddymem.data.images import ImageReadError, read_image

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_KINDS",
    "MARKER_NAME",
    "MIN_CHANGE",
    "MIN_SIDE",
    "Anomaly",
    "SynthSummary",
    "SynthesisError",
    "blob",
    "cutpaste",
    "insert_anomaly",
    "perlin_blend",
    "perlin_noise",
    "scratch",
    "synthesize_dataset",
]

logger = logging.getLogger(__name__)

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

MIN_CHANGE: int = 8
"""Smallest change (grey levels, largest over the channels) of every masked pixel."""

MIN_SIDE: int = 16
"""Smallest image height and width an anomaly is drawn into."""

MAX_DRAWS: int = 100
"""Draws tried before giving up on an anomaly whose random region is unusable."""

MARKER_NAME: str = "feddymem_synth.json"
"""File that marks a folder as the output of :func:`synthesize_dataset`."""

_MARKER_TOOL = "feddymem.data.synth"  # the marker format predates the move to data.generated; kept so older trees load
_MARKER_FORMAT = 1
_OWNED_ENTRIES = frozenset({"test", "ground_truth", "train", MARKER_NAME})

# CutPaste: patch area as a fraction of the image, aspect ratio h / w (drawn log-uniformly),
# contrast factor and brightness offset magnitude of the jitter.
_PATCH_AREA = (0.02, 0.15)
_PATCH_ASPECT = (0.3, 3.3)
_JITTER_CONTRAST = (0.7, 1.3)
_JITTER_BRIGHTNESS = (10.0, 40.0)
# CutPaste scar: length and width as fractions of the shorter image side.
_SCAR_LENGTH = (0.15, 0.4)
_SCAR_WIDTH = (0.015, 0.05)
# Perlin blend: noise threshold, accepted mask area fraction, texture opacity beta, largest
# lattice exponent k (resolution 2^k cells per axis) and smallest cell size in pixels.
_PERLIN_THRESHOLD = 0.5
_PERLIN_AREA = (0.01, 0.5)
_PERLIN_OPACITY = (0.1, 1.0)
_PERLIN_MAX_EXPONENT = 5
_PERLIN_MIN_CELL = 8
# Scratch: number of lines, length as a fraction of the shorter side, sideways bend of the
# Bezier control points as a fraction of the length, width in pixels, intensity offset.
_SCRATCH_LINES = (1, 3)
_SCRATCH_LENGTH = (0.2, 0.6)
_SCRATCH_BEND = 0.3
_SCRATCH_WIDTH = (1, 4)
_SCRATCH_OFFSET = (40.0, 90.0)
# Blob: semi-axes as fractions of the shorter side, harmonics of the boundary deformation and
# their total amplitude cap, intensity shift, noise strength and noise opacity.
_BLOB_AXIS = (0.04, 0.15)
_BLOB_HARMONICS = (2, 6)
_BLOB_DEFORM_CAP = 0.5
_BLOB_SHIFT = (25.0, 70.0)
_BLOB_NOISE_STD = (20.0, 50.0)
_BLOB_NOISE_OPACITY = (0.6, 1.0)
# Mean intensities below / above which a dark / bright change is avoided (little headroom).
_DARK = 80.0
_BRIGHT = 175.0
_LUMA = np.array([0.299, 0.587, 0.114])


class SynthesisError(ValueError):
    """An anomaly cannot be drawn into an image, or a synthetic data set cannot be written."""


class Anomaly(NamedTuple):
    """An image with an inserted anomaly and its exact mask.

    Attributes:
        image: ``(H, W, 3)`` uint8, equal to the input outside ``mask``.
        mask: ``(H, W)`` bool, non-empty; every True pixel differs from the input by at least
            :data:`MIN_CHANGE` in some channel.
    """

    image: UInt8Array
    mask: BoolArray


AnomalyFn = Callable[..., Anomaly]


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_inputs(image: np.ndarray, rng: np.random.Generator) -> None:
    """Validate an ``(H, W, 3)`` uint8 image and a numpy ``Generator``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    _check_image(image, name="image")


def _check_image(image: np.ndarray, *, name: str) -> None:
    """Validate an ``(H, W, 3)`` uint8 array of at least ``MIN_SIDE`` pixels per side."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{name} must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}"
        )
    if min(image.shape[:2]) < MIN_SIDE:
        raise SynthesisError(
            f"{name} of size (H, W)={image.shape[:2]} is too small for an anomaly: "
            f"both sides must be at least {MIN_SIDE} pixels"
        )


def _is_gray(image: UInt8Array) -> bool:
    """True when all three channels are equal."""
    return bool(
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 0], image[..., 2])
    )


def _to_gray(values: FloatArray) -> FloatArray:
    """Replace the channels of ``(..., 3)`` values by their luma, repeated three times."""
    luma = values @ _LUMA
    return np.repeat(luma[..., None], 3, axis=-1)


def _sign_with_headroom(level: float, rng: np.random.Generator) -> float:
    """Direction (+1 brighter, -1 darker) for a change of a region with mean ``level``."""
    if level < _DARK:
        return 1.0
    if level > _BRIGHT:
        return -1.0
    return 1.0 if rng.random() < 0.5 else -1.0


def _finalize(image: UInt8Array, proposal: FloatArray, region: BoolArray) -> Anomaly:
    """Apply ``proposal`` inside ``region`` and enforce the mask contract.

    Args:
        image: ``(H, W, 3)`` uint8 input.
        proposal: ``(H, W, 3)`` float values wanted inside ``region`` (clipped to 0..255).
        region: ``(H, W)`` bool, non-empty.

    Returns:
        The anomaly with ``mask == region``: unchanged outside, at least ``MIN_CHANGE`` inside.
    """
    if not region.any():
        raise SynthesisError("internal: empty anomaly region")
    out = image.copy()
    orig = image[region].astype(np.int16)
    new = np.clip(np.rint(proposal[region]), 0, 255).astype(np.int16)
    weak = np.abs(new - orig).max(axis=1) < MIN_CHANGE
    if weak.any():
        base = orig[weak]
        # Prefer the direction the anomaly already went; fall back on the side with headroom.
        drift = (new[weak] - base).mean(axis=1)
        up = np.where(drift != 0, drift > 0, base.mean(axis=1) < 127.5)
        can_up = base.min(axis=1) <= 255 - MIN_CHANGE
        can_down = base.max(axis=1) >= MIN_CHANGE
        up = np.where(up, can_up, ~can_down)
        step = np.where(up, MIN_CHANGE, -MIN_CHANGE).astype(np.int16)
        new[weak] = np.clip(base + step[:, None], 0, 255)
    out[region] = new.astype(np.uint8)
    return Anomaly(image=out, mask=region.copy())


# --------------------------------------------------------------------------------------------
# CutPaste
# --------------------------------------------------------------------------------------------


def _rectangle_offsets(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of every pixel of an axis-aligned ``height x width`` patch."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return rows.ravel(), cols.ravel()


def _rotated_rectangle_offsets(
    length: float, width: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (from the bounding box corner) of a rectangle rotated by ``angle`` rad."""
    half = np.array([[-length, -width], [length, -width], [length, width], [-length, width]]) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    rows = half[:, 0] * sin + half[:, 1] * cos
    cols = half[:, 0] * cos - half[:, 1] * sin
    rows = rows - rows.min()
    cols = cols - cols.min()
    rr, cc = draw_polygon(rows, cols)
    return rr.astype(np.int64), cc.astype(np.int64)


def cutpaste(
    image: UInt8Array,
    rng: np.random.Generator,
    *,
    source: UInt8Array | None = None,
    scar: bool = False,
) -> Anomaly:
    """CutPaste: a jittered patch cut from a normal image and pasted at a random place.

    The patch covers 2-15 % of the image with aspect ratio h / w in 0.3-3.3 (log-uniform).  The
    ``scar`` variant cuts a thin long rectangle (length 15-40 %, width 1.5-5 % of the shorter
    side, at least 2 px) rotated by a random angle.  The pasted pixels get a contrast factor in
    0.7-1.3 about the patch mean and a brightness offset of 10-40 grey levels, either sign.

    Args:
        image: ``(H, W, 3)`` uint8 normal image, both sides at least :data:`MIN_SIDE`.
        rng: Source of all randomness.
        source: ``(H', W', 3)`` uint8 normal image to cut from; the image itself when None.
            A larger patch than ``source`` holds is shrunk to fit.
        scar: Cut a thin rotated scar instead of a rectangle.

    Returns:
        The image with the pasted patch; the mask is the patch's footprint.
    """
    _check_inputs(image, rng)
    donor = image if source is None else source
    if source is not None:
        _check_image(source, name="source")
    h, w = image.shape[:2]
    dh, dw = donor.shape[:2]
    for _ in range(MAX_DRAWS):
        if scar:
            side = min(h, w)
            length = max(6.0, rng.uniform(*_SCAR_LENGTH) * side)
            width = max(2.0, rng.uniform(*_SCAR_WIDTH) * side)
            rr, cc = _rotated_rectangle_offsets(length, width, rng.uniform(0.0, math.pi))
        else:
            area = rng.uniform(*_PATCH_AREA) * h * w
            aspect = math.exp(rng.uniform(math.log(_PATCH_ASPECT[0]), math.log(_PATCH_ASPECT[1])))
            ph = min(max(1, round(math.sqrt(area * aspect))), h - 1, dh)
            pw = min(max(1, round(math.sqrt(area / aspect))), w - 1, dw)
            rr, cc = _rectangle_offsets(ph, pw)
        if rr.size == 0:
            continue
        box_h, box_w = int(rr.max()) + 1, int(cc.max()) + 1
        if box_h > min(h, dh) or box_w > min(w, dw):
            continue
        sy, sx = rng.integers(0, dh - box_h + 1), rng.integers(0, dw - box_w + 1)
        ty, tx = rng.integers(0, h - box_h + 1), rng.integers(0, w - box_w + 1)
        patch = donor[sy + rr, sx + cc].astype(np.float64)  # (N, 3)
        mean = patch.mean(axis=0, keepdims=True)
        contrast = rng.uniform(*_JITTER_CONTRAST)
        brightness = rng.uniform(*_JITTER_BRIGHTNESS) * (1.0 if rng.random() < 0.5 else -1.0)
        patch = (patch - mean) * contrast + mean + brightness
        if _is_gray(image):
            patch = _to_gray(patch)
        proposal = image.astype(np.float64)
        proposal[ty + rr, tx + cc] = patch
        region = np.zeros((h, w), dtype=bool)
        region[ty + rr, tx + cc] = True
        return _finalize(image, proposal, region)
    raise SynthesisError(f"could not fit a CutPaste patch into an image of size {(h, w)}")


# --------------------------------------------------------------------------------------------
# Perlin noise blend (DRAEM-style)
# --------------------------------------------------------------------------------------------


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
        colours = _to_gray(colours)
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
        values = _to_gray(values)
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
    _check_inputs(image, rng)
    if texture is not None:
        _check_image(texture, name="texture")
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
    gray = _is_gray(image)
    if texture is None:
        pattern = _random_texture(shape, rng, gray=gray)
    else:
        pattern = _prepare_texture(texture, shape, rng, gray=gray)
    beta = rng.uniform(*_PERLIN_OPACITY)
    proposal = (1.0 - beta) * image.astype(np.float64) + beta * pattern
    return _finalize(image, proposal, region)


# --------------------------------------------------------------------------------------------
# Scratch
# --------------------------------------------------------------------------------------------


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
    _check_inputs(image, rng)
    shape = (int(image.shape[0]), int(image.shape[1]))
    background = ndimage.gaussian_filter(image.astype(np.float64), sigma=(3.0, 3.0, 0.0))
    proposal = image.astype(np.float64)
    region = np.zeros(shape, dtype=bool)
    n_lines = int(rng.integers(_SCRATCH_LINES[0], _SCRATCH_LINES[1] + 1))
    for _ in range(n_lines):
        width = int(rng.integers(_SCRATCH_WIDTH[0], _SCRATCH_WIDTH[1] + 1))
        line = _bezier_line(shape, rng, width=width)
        local = background[line]  # (N, 3)
        sign = _sign_with_headroom(float((local @ _LUMA).mean()), rng)
        proposal[line] = local + sign * rng.uniform(*_SCRATCH_OFFSET)
        region |= line
    if _is_gray(image):
        proposal = _to_gray(proposal)
    return _finalize(image, proposal, region)


# --------------------------------------------------------------------------------------------
# Blob
# --------------------------------------------------------------------------------------------


def blob(image: UInt8Array, rng: np.random.Generator) -> Anomaly:
    """An irregular blob: a random ellipse with a smoothly deformed boundary.

    The ellipse (semi-axes 4-15 % of the shorter side, at least 2 px, random orientation,
    centre inside the middle 80 % of the image) has boundary radius
    ``1 + sum_k a_k cos(k phi + p_k)`` for harmonics k = 2..6 (amplitudes summing to at most
    0.5), so the blob is star-shaped around its centre and connected.  It is filled either
    with the image shifted by 25-70 grey levels (direction with headroom) or with the blob's
    mean colour plus Gaussian noise (std 20-50) at opacity 0.6-1.0.

    Args:
        image: ``(H, W, 3)`` uint8 normal image, both sides at least :data:`MIN_SIDE`.
        rng: Source of all randomness.

    Returns:
        The image with the blob; the mask is the blob.
    """
    _check_inputs(image, rng)
    h, w = image.shape[:2]
    side = min(h, w)
    semi = np.maximum(2.0, rng.uniform(*_BLOB_AXIS, size=2) * side)
    theta = rng.uniform(0.0, math.pi)
    cy = rng.uniform(0.1, 0.9) * (h - 1)
    cx = rng.uniform(0.1, 0.9) * (w - 1)
    harmonics = np.arange(_BLOB_HARMONICS[0], _BLOB_HARMONICS[1] + 1)
    amps = rng.uniform(0.0, 1.0, size=harmonics.size) / harmonics
    amps *= _BLOB_DEFORM_CAP * rng.uniform(0.3, 1.0) / amps.sum()
    phases = rng.uniform(0.0, 2.0 * math.pi, size=harmonics.size)

    dy = np.arange(h)[:, None] - cy
    dx = np.arange(w)[None, :] - cx
    u = (dy * math.cos(theta) + dx * math.sin(theta)) / semi[0]
    v = (-dy * math.sin(theta) + dx * math.cos(theta)) / semi[1]
    radius = np.hypot(u, v)
    phi = np.arctan2(v, u)
    boundary = 1.0 + np.cos(harmonics * phi[..., None] + phases) @ amps
    region = np.asarray(radius <= boundary)
    # The pixel nearest the centre has radius <= 0.36 < 0.5 <= boundary, so region is non-empty.

    values = image.astype(np.float64)
    inside = values[region]  # (N, 3)
    gray = _is_gray(image)
    if rng.random() < 0.5:
        sign = _sign_with_headroom(float((inside @ _LUMA).mean()), rng)
        filled = inside + sign * rng.uniform(*_BLOB_SHIFT)
    else:
        std = rng.uniform(*_BLOB_NOISE_STD)
        noise = rng.normal(0.0, std, size=(inside.shape[0], 1 if gray else 3))
        alpha = rng.uniform(*_BLOB_NOISE_OPACITY)
        filled = (1.0 - alpha) * inside + alpha * (inside.mean(axis=0) + noise)
    if gray:
        filled = _to_gray(filled)
    values[region] = filled
    return _finalize(image, values, region)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

ANOMALY_KINDS: dict[str, AnomalyFn] = {
    "cutpaste": cutpaste,
    "perlin": perlin_blend,
    "scratch": scratch,
    "blob": blob,
}
"""Anomaly functions by the name configs, folders and the CLI use."""

DEFAULT_KINDS: tuple[str, ...] = tuple(ANOMALY_KINDS)


def insert_anomaly(
    image: UInt8Array, kind: str, rng: np.random.Generator, **options: Any
) -> Anomaly:
    """Insert one anomaly of a named kind.

    Args:
        image: ``(H, W, 3)`` uint8 normal image.
        kind: A key of :data:`ANOMALY_KINDS`.
        rng: Source of all randomness.
        **options: Keyword options of that kind's function (for example ``scar=True`` for
            ``"cutpaste"``); an option the function does not take raises ``TypeError``.

    Returns:
        The image with the anomaly and its ``(H, W)`` bool mask.
    """
    try:
        fn = ANOMALY_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown anomaly kind {kind!r}; known kinds: {', '.join(sorted(ANOMALY_KINDS))}"
        ) from None
    return fn(image, rng, **options)


# --------------------------------------------------------------------------------------------
# Data-set writer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_dataset` wrote.

    Attributes:
        out: Root of the MVTec-layout tree.
        seed: Seed used.
        kinds: Anomaly kinds requested, in order.
        n_good: Images written to ``test/good``.
        n_anomalous: Images written to ``test/<kind>`` (each with a mask).
        n_train: Images written to ``train/good``.
        per_kind: Anomalous images written per kind.
        skipped: Input files left out: unreadable, or unable to take an anomaly.
    """

    out: Path
    seed: int
    kinds: tuple[str, ...]
    n_good: int
    n_anomalous: int
    n_train: int
    per_kind: dict[str, int]
    skipped: tuple[Path, ...]

    @property
    def n_skipped(self) -> int:
        """Number of input files left out."""
        return len(self.skipped)


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate anomaly kind names: known, at least one, no repeats."""
    names = tuple(kinds)
    if isinstance(kinds, str) or not names:
        raise ValueError(f"kinds must be a non-empty sequence of names, got {kinds!r}")
    unknown = [k for k in names if k not in ANOMALY_KINDS]
    if unknown:
        raise ValueError(
            f"unknown anomaly kinds {unknown}; known kinds: {', '.join(sorted(ANOMALY_KINDS))}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"anomaly kinds repeat: {list(names)}")
    return names


def _check_stems(paths: Sequence[Path], *, role: str) -> None:
    """Refuse inputs whose file stems collide (output names keep the stem)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(
                f"{role} files {seen[path.stem]} and {path} share the stem {path.stem!r}; "
                "output names keep the stem, so stems must be unique"
            )
        seen[path.stem] = path


def _plan_counts(total: int, n_good: int | None, n_anomalous: int | None) -> tuple[int, int, bool]:
    """Resolve the requested good / anomalous counts against ``total`` normals.

    Returns:
        ``(good, anomalous, good_first)``: the counts to aim for and whether the good role is
        filled first in the shuffled order.  A role the caller fixed is filled first, so files
        that turn out unreadable shorten the role that takes "the rest".
    """
    for name, value in (("n_good", n_good), ("n_anomalous", n_anomalous)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    good_first = not (n_good is None and n_anomalous is not None)
    if n_good is None:
        n_good = total // 2 if n_anomalous is None else max(0, total - n_anomalous)
    if n_anomalous is None:
        n_anomalous = total - n_good
    if n_good + n_anomalous > total:
        raise ValueError(
            f"n_good={n_good} + n_anomalous={n_anomalous} exceeds the {total} normals given"
        )
    return n_good, n_anomalous, good_first


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: create it, or clear a previous synthetic output it holds.

    Raises:
        SynthesisError: ``out`` is a file, or a non-empty folder that is not a previous output
            of :func:`synthesize_dataset` (or holds entries besides that output).
    """
    if out.exists() and not out.is_dir():
        raise SynthesisError(f"{out}: exists and is not a folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            marker = out / MARKER_NAME
            if not marker.is_file():
                raise SynthesisError(
                    f"{out}: folder is not empty and holds no {MARKER_NAME} from a previous "
                    "synthesis; refusing to write into it (choose an empty or new folder)"
                )
            try:
                tool = json.loads(marker.read_text(encoding="utf-8")).get("tool")
            except (OSError, ValueError, AttributeError) as err:
                raise SynthesisError(f"{marker}: unreadable marker file ({err})") from err
            if tool != _MARKER_TOOL:
                raise SynthesisError(f"{marker}: not a marker written by {_MARKER_TOOL}")
            foreign = [name for name in entries if name not in _OWNED_ENTRIES]
            if foreign:
                raise SynthesisError(
                    f"{out}: holds a previous synthetic output but also {foreign}; "
                    "refusing to overwrite it"
                )
            for name in ("test", "ground_truth", "train"):
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
            logger.info("Replacing the previous synthetic output in %s", out)
    out.mkdir(parents=True, exist_ok=True)


def _write_png(array: np.ndarray, path: Path) -> None:
    """Write an ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG (deterministic bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _write_marker(out: Path, payload: dict[str, Any]) -> None:
    """Write the marker JSON with sorted keys (byte-identical for identical content)."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    (out / MARKER_NAME).write_text(text, encoding="utf-8")


def _try_read(path: Path, skipped: list[Path]) -> UInt8Array | None:
    """Read an image, or log a warning, record it in ``skipped`` and return None."""
    try:
        return read_image(path)
    except ImageReadError as err:
        logger.warning("Skipping unreadable image: %s", err)
        skipped.append(path)
        return None


def synthesize_dataset(
    normals: Sequence[Path],
    out: Path,
    *,
    seed: int = 0,
    kinds: Sequence[str] = DEFAULT_KINDS,
    n_anomalous: int | None = None,
    n_good: int | None = None,
    train: Sequence[Path] = (),
) -> SynthSummary:
    """Write a pixel-labelled MVTec-layout test set with synthetic anomalies.

    The normals are sorted by path and shuffled by ``seed``; in that order ``n_good`` readable
    ones are resaved as PNG to ``out/test/good/<stem>.png`` (held out, untouched) and
    ``n_anomalous`` readable ones receive one anomaly each (the count the caller fixed is
    served first, the other role takes the rest), kinds taken in turn, written to
    ``out/test/<kind>/<stem>.png`` with the mask
    ``out/ground_truth/<kind>/<stem>_mask.png`` (uint8 0 / 255, same size).  ``train`` images
    are resaved to ``out/train/good/<stem>.png``.  Unreadable files (and images too small for
    an anomaly) are skipped with a warning and listed in the summary and the marker
    ``out/feddymem_synth.json``, which also records the settings and counts.

    Same inputs and seed give byte-identical files.  Every anomalous image draws from its own
    generator, keyed by the seed and its position in the shuffled order.

    Args:
        normals: Normal image files to hold out or corrupt; stems must be unique.
        out: Output folder: new, empty, or a previous output of this function (replaced).
        seed: Seed of the shuffle and of every anomaly.
        kinds: Anomaly kinds (keys of :data:`ANOMALY_KINDS`), used in turn.
        n_anomalous: Anomalous images to write; None: all normals not held out as good.
        n_good: Normals held out as ``test/good``; None: the rest when ``n_anomalous`` is
            given, else half of the normals (rounded down).
        train: Normal files for ``train/good``; must not overlap ``normals``.

    Returns:
        The counts written and the files skipped.  With unreadable files a count can fall
        short of the request; a shortfall of a count the caller gave is logged.

    Raises:
        ValueError: bad kinds or counts, colliding stems, or ``train`` overlapping ``normals``.
        SynthesisError: ``out`` is not a folder this function may write into.
    """
    names = _check_kinds(kinds)
    normal_paths = sorted((Path(p) for p in normals), key=str)
    train_paths = sorted((Path(p) for p in train), key=str)
    _check_stems(normal_paths, role="normal")
    _check_stems(train_paths, role="train")
    overlap = {p.resolve() for p in normal_paths} & {p.resolve() for p in train_paths}
    if overlap:
        raise ValueError(f"train and normals share files (test leakage): {sorted(overlap)}")
    want_good, want_anomalous, good_first = _plan_counts(len(normal_paths), n_good, n_anomalous)
    out = Path(out)
    _prepare_out(out)

    settings: dict[str, Any] = {
        "seed": seed,
        "kinds": list(names),
        "n_good": n_good,
        "n_anomalous": n_anomalous,
        "min_change": MIN_CHANGE,
        "n_normals_given": len(normal_paths),
        "n_train_given": len(train_paths),
    }
    # Written first so an interrupted run leaves a folder the next run may replace.
    _write_marker(
        out,
        {"tool": _MARKER_TOOL, "format": _MARKER_FORMAT, "complete": False, "settings": settings},
    )

    root_seq = np.random.SeedSequence(seed)
    order_seq, item_seq = root_seq.spawn(2)
    order = np.random.default_rng(order_seq).permutation(len(normal_paths))
    item_seqs = item_seq.spawn(len(normal_paths))

    skipped: list[Path] = []
    per_kind = dict.fromkeys(names, 0)
    written_good = 0
    written_anomalous = 0
    for position, index in enumerate(order):
        good_open = written_good < want_good
        anomalous_open = written_anomalous < want_anomalous
        if not (good_open or anomalous_open):
            break
        path = normal_paths[int(index)]
        image = _try_read(path, skipped)
        if image is None:
            continue
        if good_open and (good_first or not anomalous_open):
            _write_png(image, out / "test" / "good" / f"{path.stem}.png")
            written_good += 1
            continue
        kind = names[written_anomalous % len(names)]
        rng = np.random.default_rng(item_seqs[position])
        try:
            result = insert_anomaly(image, kind, rng)
        except SynthesisError as err:
            logger.warning("Skipping %s: %s", path, err)
            skipped.append(path)
            continue
        _write_png(result.image, out / "test" / kind / f"{path.stem}.png")
        mask = np.where(result.mask, 255, 0).astype(np.uint8)
        _write_png(mask, out / "ground_truth" / kind / f"{path.stem}_mask.png")
        per_kind[kind] += 1
        written_anomalous += 1

    written_train = 0
    for path in train_paths:
        image = _try_read(path, skipped)
        if image is None:
            continue
        _write_png(image, out / "train" / "good" / f"{path.stem}.png")
        written_train += 1

    for role, asked, written in (
        ("good", n_good, written_good),
        ("anomalous", n_anomalous, written_anomalous),
    ):
        if asked is not None and written < asked:
            logger.warning(
                "Wrote %d %s test images of the %d requested (%d files skipped)",
                written,
                role,
                asked,
                len(skipped),
            )
    counts = {
        "good": written_good,
        "anomalous": written_anomalous,
        "per_kind": per_kind,
        "train": written_train,
        "skipped": len(skipped),
    }
    _write_marker(
        out,
        {
            "tool": _MARKER_TOOL,
            "format": _MARKER_FORMAT,
            "complete": True,
            "synthetic": True,
            "settings": settings,
            "counts": counts,
            "skipped": [str(p) for p in skipped],
        },
    )
    logger.info(
        "Synthetic set in %s: %d good, %d anomalous %s, %d train, %d skipped",
        out,
        written_good,
        written_anomalous,
        per_kind,
        written_train,
        len(skipped),
    )
    return SynthSummary(
        out=out,
        seed=seed,
        kinds=names,
        n_good=written_good,
        n_anomalous=written_anomalous,
        n_train=written_train,
        per_kind=per_kind,
        skipped=tuple(skipped),
    )
