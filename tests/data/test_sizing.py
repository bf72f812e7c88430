"""resolve_size: square or aspect-keeping target sizes, unreadable headers, varying aspect ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddymem.data.images import DataError
from feddymem.data.sizing import resolve_size


def _image(path: Path, hw: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*hw, 3), 128, dtype=np.uint8)).save(path)
    return path


def test_resolve_size_square_without_aspect() -> None:
    assert resolve_size([], image_size=224, keep_aspect=False) == (224, 224)
    with pytest.raises(ValueError, match="positive"):
        resolve_size([], image_size=0, keep_aspect=False)
    with pytest.raises(DataError, match="no image paths"):
        resolve_size([], image_size=224, keep_aspect=True)


def test_resolve_size_keeps_the_ratio_of_tall_and_wide_images(tmp_path: Path) -> None:
    # KolektorSDD-like: 500 wide, 1250 tall (a little spread in height, as in the real set).
    tall = [_image(tmp_path / f"t{i}.png", hw=(1240 + 5 * i, 500)) for i in range(5)]
    size = resolve_size(tall, image_size=224, keep_aspect=True, multiple=32)
    # 224 * 1250 / 500 = 560 = 17.5 * 32, rounded half up to 18 * 32.
    assert size == (576, 224)
    assert abs(size[0] - 224 * 2.5) <= 32

    wide = [_image(tmp_path / f"w{i}.png", hw=(50, 125)) for i in range(3)]
    assert resolve_size(wide, image_size=64, keep_aspect=True, multiple=16) == (64, 160)
    assert resolve_size(wide, image_size=224, keep_aspect=False) == (224, 224)


def test_resolve_size_skips_unreadable_headers(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    good = _image(tmp_path / "ok.png", hw=(64, 32))
    assert resolve_size([broken, good], image_size=32, keep_aspect=True) == (64, 32)
    with pytest.raises(DataError, match="none of 1 probed"):
        resolve_size([broken], image_size=32, keep_aspect=True)


def test_resolve_size_squashes_when_aspect_ratios_vary(tmp_path: Path) -> None:
    paths = []
    for i, (h, w) in enumerate([(40, 100), (100, 40), (60, 60), (90, 50), (50, 90)]):
        path = tmp_path / f"{i}.png"
        Image.new("L", (w, h)).save(path)
        paths.append(path)
    assert resolve_size(paths, image_size=64, keep_aspect=True) == (64, 64)
