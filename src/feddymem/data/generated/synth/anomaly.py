"""What every synthetic anomaly kind returns, and the mask contract they share.

:func:`finalize` applies a kind's proposed pixels inside its region and enforces the contract
(see the package docstring); the input checks and the grey-image helpers are shared by all kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

MIN_CHANGE: int = 8
"""Smallest change (grey levels, largest over the channels) of every masked pixel."""

MIN_SIDE: int = 16
"""Smallest image height and width an anomaly is drawn into."""

MAX_DRAWS: int = 100
"""Draws tried before giving up on an anomaly whose random region is unusable."""

# Mean intensities below / above which a dark / bright change is avoided (little headroom).
_DARK = 80.0
_BRIGHT = 175.0
LUMA = np.array([0.299, 0.587, 0.114])


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


def check_inputs(image: np.ndarray, rng: np.random.Generator) -> None:
    """Validate an ``(H, W, 3)`` uint8 image and a numpy ``Generator``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    check_image(image, name="image")


def check_image(image: np.ndarray, *, name: str) -> None:
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


def is_gray(image: UInt8Array) -> bool:
    """True when all three channels are equal."""
    return bool(
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 0], image[..., 2])
    )


def to_gray(values: FloatArray) -> FloatArray:
    """Replace the channels of ``(..., 3)`` values by their luma, repeated three times."""
    luma = values @ LUMA
    return np.repeat(luma[..., None], 3, axis=-1)


def sign_with_headroom(level: float, rng: np.random.Generator) -> float:
    """Direction (+1 brighter, -1 darker) for a change of a region with mean ``level``."""
    if level < _DARK:
        return 1.0
    if level > _BRIGHT:
        return -1.0
    return 1.0 if rng.random() < 0.5 else -1.0


def finalize(image: UInt8Array, proposal: FloatArray, region: BoolArray) -> Anomaly:
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
