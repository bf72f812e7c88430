"""CutPaste: a jittered patch (or a thin rotated scar) cut from a normal image and pasted elsewhere."""

from __future__ import annotations

import math

import numpy as np
from skimage.draw import polygon as draw_polygon

from feddymem.data.generated.synth.anomaly import (
    MAX_DRAWS,
    Anomaly,
    SynthesisError,
    UInt8Array,
    check_image,
    check_inputs,
    finalize,
    is_gray,
    to_gray,
)

# CutPaste: patch area as a fraction of the image, aspect ratio h / w (drawn log-uniformly),
# contrast factor and brightness offset magnitude of the jitter.
_PATCH_AREA = (0.02, 0.15)
_PATCH_ASPECT = (0.3, 3.3)
_JITTER_CONTRAST = (0.7, 1.3)
_JITTER_BRIGHTNESS = (10.0, 40.0)
# CutPaste scar: length and width as fractions of the shorter image side.
_SCAR_LENGTH = (0.15, 0.4)
_SCAR_WIDTH = (0.015, 0.05)


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
    check_inputs(image, rng)
    donor = image if source is None else source
    if source is not None:
        check_image(source, name="source")
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
        if is_gray(image):
            patch = to_gray(patch)
        proposal = image.astype(np.float64)
        proposal[ty + rr, tx + cc] = patch
        region = np.zeros((h, w), dtype=bool)
        region[ty + rr, tx + cc] = True
        return finalize(image, proposal, region)
    raise SynthesisError(f"could not fit a CutPaste patch into an image of size {(h, w)}")
