"""Test images and the mask-contract check shared by the synthetic-anomaly tests."""

from __future__ import annotations

import numpy as np
from skimage.data import brick
from skimage.transform import resize

from feddymem.data.generated.synth.anomaly import MIN_CHANGE, Anomaly

KINDS = ("cutpaste", "perlin", "scratch", "blob")
N_SEEDS = 25


def textured(seed: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A colour texture: per-channel sinusoids plus pixel noise, ``(H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    channels = []
    for _ in range(3):
        fy, fx = rng.uniform(0.05, 0.4, size=2)
        wave = np.sin(fy * rows + rng.uniform(0, 6)) * np.cos(fx * cols + rng.uniform(0, 6))
        channels.append(128 + 70 * wave + rng.normal(0, 12, size=shape))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _gray_brick(shape: tuple[int, int] = (48, 80)) -> np.ndarray:
    """scikit-image's brick texture, downsized, as a three-channel grey image."""
    small = resize(brick(), shape, preserve_range=True, anti_aliasing=True)
    gray = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


IMAGES: dict[str, np.ndarray] = {
    "textured": textured(0),
    "gray_brick": _gray_brick(),
    "black": np.zeros((32, 40, 3), dtype=np.uint8),
    "white": np.full((40, 32, 3), 255, dtype=np.uint8),
}


def assert_contract(image: np.ndarray, result: Anomaly) -> None:
    """The mask contract: shapes, non-empty mask, exact outside, visible change inside."""
    out, mask = result
    assert out.dtype == np.uint8
    assert out.shape == image.shape
    assert mask.dtype == np.bool_
    assert mask.shape == image.shape[:2]
    assert mask.any()
    assert np.array_equal(out[~mask], image[~mask])
    change = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=-1)
    assert (change[mask] >= MIN_CHANGE).all()
