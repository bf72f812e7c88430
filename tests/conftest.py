"""Shared fixtures: tiny MVTec-layout data sets made on disk from real CC0 textures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDDYMEM_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_texture_tree(
    root: Path,
    *,
    n_train: int = 12,
    n_good: int = 6,
    n_bad: int = 6,
    size: int = 64,
    seed: int = 0,
    texture: str = "brick",
) -> Path:
    """An MVTec-layout tree of crops of a scikit-image texture; anomalies are bright or dark
    discs with exact masks. Returns `root`."""
    from skimage import data as skdata

    tex = getattr(skdata, texture)()
    tex = tex if tex.ndim == 2 else tex[..., 0]
    rng = np.random.default_rng(seed)
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    crop = size * 2

    def sample() -> np.ndarray:
        y, x = rng.integers(0, tex.shape[0] - crop), rng.integers(0, tex.shape[1] - crop)
        img = Image.fromarray(tex[y : y + crop, x : x + crop]).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        return np.asarray(img)

    for i in range(n_train):
        Image.fromarray(sample()).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(sample()).save(root / "test" / "good" / f"{i:03d}.png")
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_bad):
        img = sample().astype(np.float32)
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        r = rng.integers(size // 10, size // 6)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        img[mask] = 255.0 if i % 2 == 0 else 0.0
        Image.fromarray(img.astype(np.uint8)).save(root / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(
            root / "ground_truth" / "spot" / f"{i:03d}_mask.png"
        )
    return root


@pytest.fixture
def texture_tree(tmp_path: Path) -> Path:
    return make_texture_tree(tmp_path / "brick")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set FEDDYMEM_SHARED_DATA)")
    return SHARED_DATA
