"""Blobs: irregular, noise-deformed ellipses filled with shifted intensity or noise."""

from __future__ import annotations

import math

import numpy as np

from feddymem.data.generated.synth.anomaly import (
    LUMA,
    Anomaly,
    UInt8Array,
    check_inputs,
    finalize,
    is_gray,
    sign_with_headroom,
    to_gray,
)

# Blob: semi-axes as fractions of the shorter side, harmonics of the boundary deformation and
# their total amplitude cap, intensity shift, noise strength and noise opacity.
_BLOB_AXIS = (0.04, 0.15)
_BLOB_HARMONICS = (2, 6)
_BLOB_DEFORM_CAP = 0.5
_BLOB_SHIFT = (25.0, 70.0)
_BLOB_NOISE_STD = (20.0, 50.0)
_BLOB_NOISE_OPACITY = (0.6, 1.0)


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
    check_inputs(image, rng)
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
    gray = is_gray(image)
    if rng.random() < 0.5:
        sign = sign_with_headroom(float((inside @ LUMA).mean()), rng)
        filled = inside + sign * rng.uniform(*_BLOB_SHIFT)
    else:
        std = rng.uniform(*_BLOB_NOISE_STD)
        noise = rng.normal(0.0, std, size=(inside.shape[0], 1 if gray else 3))
        alpha = rng.uniform(*_BLOB_NOISE_OPACITY)
        filled = (1.0 - alpha) * inside + alpha * (inside.mean(axis=0) + noise)
    if gray:
        filled = to_gray(filled)
    values[region] = filled
    return finalize(image, values, region)
