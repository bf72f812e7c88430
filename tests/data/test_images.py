"""Reading images and masks: conversions, corrupt files, mask checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from feddymem.data.images import (
    DataError,
    ImageReadError,
    decode_image,
    read_image,
    read_image_size,
    read_mask,
)

H, W = 32, 48


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _save(array: np.ndarray, path: Path, **options: Any) -> Path:
    Image.fromarray(array).save(path, **options)
    return path


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    pixels = _rgb()
    out = read_image(_save(pixels, tmp_path / "a.png"))
    assert out.dtype == np.uint8
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, pixels)


def test_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    out = read_image(_save(_rgb(), tmp_path / "a.jpg", quality=90))
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    out = read_image(_save(gray, tmp_path / "g.png"))
    assert out.shape == (H, W, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_sixteen_bit_is_stretched_by_its_range(tmp_path: Path) -> None:
    # A 12-bit sensor range stored in a 16-bit container.
    values = np.linspace(100, 4000, H * W).reshape(H, W).astype(np.uint16)
    path = _save(values, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    assert out.min() == 0
    assert out.max() == 255
    flat = out[:, :, 0].ravel()
    assert np.all(np.diff(flat.astype(int)) >= 0)  # order of intensities kept


def test_float_tiff_is_stretched(tmp_path: Path) -> None:
    values = np.linspace(-1.0, 1.0, H * W, dtype=np.float32).reshape(H, W)
    path = _save(values, tmp_path / "f.tif")
    out = read_image(path)
    assert out.shape == (H, W, 3)
    assert (out.min(), out.max()) == (0, 255)


def test_constant_sixteen_bit_gives_zeros(tmp_path: Path) -> None:
    out = read_image(_save(np.full((H, W), 700, dtype=np.uint16), tmp_path / "c.png"))
    assert not out.any()


def test_alpha_is_dropped(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.full((H, W, 1), 10, dtype=np.uint8)], axis=2)
    out = read_image(_save(rgba, tmp_path / "rgba.png"))
    np.testing.assert_array_equal(out, rgba[:, :, :3])

    la = np.stack([rgba[:, :, 0], rgba[:, :, 3]], axis=2)
    out = read_image(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(out[:, :, 1], la[:, :, 0])


def test_palette_and_bilevel(tmp_path: Path) -> None:
    pixels = _rgb()
    palette_path = tmp_path / "p.png"
    Image.fromarray(pixels).quantize(colors=8).save(palette_path)
    assert Image.open(palette_path).mode == "P"
    assert read_image(palette_path).shape == (H, W, 3)

    bilevel_path = tmp_path / "b.png"
    Image.fromarray(pixels[:, :, 0] > 127).save(bilevel_path)
    out = read_image(bilevel_path)
    assert set(np.unique(out).tolist()) <= {0, 255}


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_an_error_naming_it(tmp_path: Path, suffix: str) -> None:
    full = _save(_rgb(), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.(png|jpg)") as caught:
        read_image(cut)
    assert "decode" in str(caught.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty"):
        read_image(empty)


def test_non_image_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    with pytest.raises(ImageReadError, match=r"notes\.png: not a recognised image"):
        read_image(text)
    with pytest.raises(ImageReadError, match=r"absent\.png: file not found"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_errors_are_value_errors() -> None:
    assert issubclass(ImageReadError, DataError)
    assert issubclass(DataError, ValueError)


def test_size_hint_decodes_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    big = np.random.default_rng(1).integers(0, 256, size=(640, 800, 3), dtype=np.uint8)
    path = _save(big, tmp_path / "big.jpg")
    decoded = decode_image(path, size_hint=(100, 120))
    assert decoded.full_hw == (640, 800)
    assert decoded.pixels.shape == (160, 200, 3)  # 1/4 scale, still >= the hint
    assert read_image(path).shape == (640, 800, 3)
    # PNGs ignore the hint.
    png = _save(_rgb(), tmp_path / "small.png")
    assert read_image(png, size_hint=(4, 4)).shape == (H, W, 3)


def test_read_image_size_from_header(tmp_path: Path) -> None:
    assert read_image_size(_save(_rgb(), tmp_path / "a.png")) == (H, W)


def test_read_mask_any_nonzero_is_anomalous(tmp_path: Path) -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[4:8, 10:20] = 255
    mask[0, 0] = 1
    out = read_mask(_save(mask, tmp_path / "m.png"), expected_hw=(H, W))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, mask != 0)

    colour = np.zeros((H, W, 3), dtype=np.uint8)
    colour[1, 2, 2] = 9
    out = read_mask(_save(colour, tmp_path / "c.png"), expected_hw=(H, W))
    assert out.sum() == 1
    assert out[1, 2]


def test_mask_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    mask_path = _save(np.zeros((H, W + 1), dtype=np.uint8), tmp_path / "m_mask.png")
    image_path = tmp_path / "m.png"
    with pytest.raises(DataError) as caught:
        read_mask(mask_path, expected_hw=(H, W), image_path=image_path)
    message = str(caught.value)
    assert str(mask_path) in message
    assert str(image_path) in message
    assert f"({H}, {W + 1})" in message
    assert f"({H}, {W})" in message


def test_unreadable_mask(tmp_path: Path) -> None:
    broken = tmp_path / "broken_mask.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageReadError, match=r"broken_mask\.png"):
        read_mask(broken, expected_hw=(H, W))


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_resize_before_rgb_gives_the_pixels_of_resize_after(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(_rgb(seed=3))
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
    path = tmp_path / f"a-{mode}.png"
    image.save(path)
    full = decode_image(path)
    after = np.asarray(Image.fromarray(full.pixels).resize((20, 12), Image.Resampling.BILINEAR))
    early = decode_image(path, resize_to=(12, 20))
    assert early.full_hw == (H, W)
    if mode == "P":  # palette indices cannot be interpolated: left at full size
        np.testing.assert_array_equal(early.pixels, full.pixels)
    else:
        np.testing.assert_array_equal(early.pixels, after)
