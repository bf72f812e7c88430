"""Reading single image and mask files into NumPy arrays.

Every reader decodes the whole file (``Image.load()``) so a truncated or corrupt file fails here,
with the path and the reason, instead of somewhere deep inside a batch.  (This relies on
Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.)  Arrays are the edge
format of the package; tensors are made from them in :mod:`feddymem.data.loader`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MIN_IMAGE_SIDE",
    "DataError",
    "DecodedImage",
    "ImageReadError",
    "MaskSizeError",
    "check_image_size",
    "decode_image",
    "read_image",
    "read_image_size",
    "read_mask",
    "to_rgb_array",
]

logger = logging.getLogger(__name__)

# Modes Pillow converts to RGB directly; alpha (LA, RGBA, PA, ...) is dropped by the conversion.
_TO_RGB_MODES = frozenset(
    {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}
)
# Modes with more than 8 bits per sample, stretched to 8 bits by the image's own range.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# Errors Pillow raises for unreadable content (truncation is an OSError; some plugins raise
# SyntaxError or ValueError on malformed headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DataError(ValueError):
    """A problem with a data file or folder; the message names the path and what is wrong."""


class ImageReadError(DataError):
    """An image or mask file that cannot be read as an image."""


class MaskSizeError(DataError):
    """A ground-truth mask whose size is not its image's: the data set is wrong, and every
    metric computed without the image would be too (never skipped)."""


# The smallest side an image may have (the smallest input size a detector takes): a smaller
# image, upsampled to the input size, is a smear that scores like an anomaly and, among the
# held-out normals, would raise the threshold.
MIN_IMAGE_SIDE = 32


def check_image_size(path: Path, hw: tuple[int, int]) -> None:
    """Raise :class:`ImageReadError` naming `path` when an image of size `hw` = (H, W) is
    smaller than :data:`MIN_IMAGE_SIDE` on a side."""
    if min(hw) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{path}: image is {hw[1]}x{hw[0]} px, smaller than the minimum "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and the size of the file it came from.

    Attributes:
        pixels: ``(h, w, 3)`` uint8 RGB; smaller than ``full_hw`` when a JPEG was decoded at
            reduced scale.
        full_hw: ``(H, W)`` of the file at full resolution, the size its mask must have.
    """

    pixels: np.ndarray
    full_hw: tuple[int, int]


def _check_file(path: Path) -> None:
    """Raise :class:`ImageReadError` for a path that is not a non-empty regular file."""
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")


@contextmanager
def _read_errors(file: Path, failure: str) -> Iterator[None]:
    """Pillow's errors for unreadable content inside the block, as :class:`ImageReadError`
    naming `file`: not an image, or `failure` (e.g. "cannot decode image") and the reason."""
    try:
        yield
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{file}: not a recognised image file") from None
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"{file}: {failure} ({err})") from err


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map a wide-range array onto 0..255 by its own minimum and maximum.

    Sensors often fill only 10 or 12 of 16 bits, so stretching by the data range (not the
    container range) keeps the contrast.  A constant image maps to zeros.

    Args:
        values: ``(H, W)`` array of any real dtype.

    Returns:
        ``(H, W)`` uint8.
    """
    data = values.astype(np.float64, copy=False)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint8)
    lo = float(data[finite].min())
    hi = float(data[finite].max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = (np.where(finite, data, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# Modes whose bilinear resize commutes with the conversion to RGB (palette indices and packed
# or wide modes do not).
_RESIZE_FIRST_MODES = frozenset({"L", "RGB"})


def to_rgb_array(img: Image.Image, path: Path | str) -> np.ndarray:
    """Convert a loaded Pillow image to ``(H, W, 3)`` uint8 RGB (`path` names it in errors)."""
    mode = img.mode
    if mode in _WIDE_MODES:
        gray = _stretch_to_uint8(np.asarray(img))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode not in _TO_RGB_MODES:
        raise ImageReadError(f"{path}: unsupported image mode {mode!r}")
    rgb = img if mode == "RGB" else img.convert("RGB")
    return np.array(rgb, dtype=np.uint8)


def decode_image(
    path: str | os.PathLike[str],
    *,
    size_hint: tuple[int, int] | None = None,
    resize_to: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode an image file to RGB, optionally at reduced scale for large JPEGs.

    Args:
        path: Image file.
        size_hint: ``(H, W)`` the caller will resize to.  For a JPEG at least twice as large
            on both sides, the decoder works at 1/2, 1/4 or 1/8 scale, never below the hint,
            which is much faster than a full decode followed by a downscale.
        resize_to: ``(H, W)``: resize (bilinear, antialiased) before the RGB expansion, which
            for a grayscale image is a third of the work of resizing its RGB copy and gives
            the same pixels.  Other modes are returned at their decoded size, for the caller
            to resize.

    Returns:
        The ``(h, w, 3)`` uint8 pixels and the full-resolution ``(H, W)``.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt or non-image file, or an image mode
            with no sensible RGB conversion.
    """
    file = Path(path)
    _check_file(file)
    with _read_errors(file, "cannot decode image"):
        with Image.open(file) as img:
            full_hw = (img.height, img.width)
            if size_hint is not None and img.format == "JPEG":
                hint_h, hint_w = size_hint
                if hint_h > 0 and hint_w > 0:
                    img.draft(None, (hint_w, hint_h))
            img.load()
            ready: Image.Image = img
            if resize_to is not None and img.mode in _RESIZE_FIRST_MODES:
                height, width = resize_to
                if (img.height, img.width) != (height, width):
                    ready = img.resize((width, height), Image.Resampling.BILINEAR)
            pixels = to_rgb_array(ready, file)
    return DecodedImage(pixels=pixels, full_hw=full_hw)


def read_image(
    path: str | os.PathLike[str], *, size_hint: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an image file as RGB.

    Grayscale, palette and bilevel images are expanded to three channels, alpha is dropped,
    16-bit and 32-bit images are stretched to 8 bits by their own value range.

    Args:
        path: Image file (any format Pillow reads).
        size_hint: ``(H, W)`` target size; see :func:`decode_image`.  With a hint a JPEG may
            come back smaller than the file, never smaller than the hint.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageReadError: the file cannot be read; the message names the path and the reason.
    """
    return decode_image(path, size_hint=size_hint).pixels


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Read an image's size from its header, without decoding the pixels.

    Args:
        path: Image file.

    Returns:
        ``(H, W)``.

    Raises:
        ImageReadError: the file is missing, empty or not an image.
    """
    file = Path(path)
    _check_file(file)
    with _read_errors(file, "cannot read image header"):
        with Image.open(file) as img:
            return (img.height, img.width)


def read_mask(
    path: str | os.PathLike[str],
    *,
    expected_hw: tuple[int, int],
    image_path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Read a ground-truth mask; any non-zero pixel marks an anomaly.

    Args:
        path: Mask file (usually PNG, 0 and 255).
        expected_hw: ``(H, W)`` of the image the mask belongs to, at full resolution.
        image_path: That image, named in the error when the sizes differ.

    Returns:
        ``(H, W)`` bool, True where anomalous.

    Raises:
        ImageReadError: the mask file cannot be read.
        DataError: the mask's size differs from ``expected_hw``.
    """
    file = Path(path)
    _check_file(file)
    with _read_errors(file, "cannot decode mask"):
        with Image.open(file) as img:
            img.load()
            mode = img.mode
            if mode in _WIDE_MODES or mode in {"1", "L"}:
                values = np.asarray(img)
            elif mode in {"LA", "La"}:
                values = np.asarray(img.getchannel(0))
            elif mode in _TO_RGB_MODES:
                # Palette and colour masks: a pixel is anomalous when its colour is not black.
                values = np.asarray(np.asarray(img.convert("RGB")).any(axis=2))
            else:
                raise ImageReadError(f"{file}: unsupported mask mode {mode!r}")

    mask_hw = (int(values.shape[0]), int(values.shape[1]))
    if mask_hw != tuple(expected_hw):
        owner = f"image {Path(image_path)}" if image_path is not None else "its image"
        raise MaskSizeError(
            f"{file}: mask size (H, W)={mask_hw} differs from {owner} size (H, W)="
            f"{tuple(expected_hw)}"
        )
    return np.asarray(values != 0, dtype=bool)
