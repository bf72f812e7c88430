"""Choosing the ``(H, W)`` the images of a data set are resized to, from their headers (no decode)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feddymem.data.images import DataError, ImageReadError, check_image_size, read_image_size

__all__ = ["median_image_size", "resolve_size"]

logger = logging.getLogger(__name__)

_ASPECT_PROBES = 16
"""How many image headers :func:`resolve_size` reads to estimate the aspect ratio."""


_ASPECT_SPREAD = 1.25  # 90th / 10th percentile of H / W above which a set is squashed


def _round_to_multiple(value: float, multiple: int) -> int:
    """Nearest positive multiple of ``multiple`` (halves round up)."""
    return max(multiple, multiple * math.floor(value / multiple + 0.5))


def resolve_size(
    paths: Sequence[Path], *, image_size: int, keep_aspect: bool, multiple: int = 32
) -> tuple[int, int]:
    """Choose the ``(H, W)`` every image of a data set is resized to.

    Without ``keep_aspect`` the answer is ``(image_size, image_size)``.  With it, the headers of
    up to 16 images spread evenly over ``paths`` are read (no decode), the median ratio
    ``long / short`` is taken, the short side becomes ``image_size`` and the long side
    ``image_size * ratio``, each rounded to the nearest multiple of ``multiple``.  Elongated
    images (KolektorSDD is 500 x 1250) then keep their shape, where squashing them into a square
    would erase thin cracks.  When the ratios themselves vary across the set (90th / 10th
    percentile above 1.25) no single shape keeps them, and the answer is a square.

    Args:
        paths: Image files of the data set.
        image_size: Target length of the short side (of both sides without ``keep_aspect``).
        keep_aspect: Keep the median aspect ratio of the images.
        multiple: Both sides become multiples of this (feature-map strides need it).

    Returns:
        ``(H, W)``.

    Raises:
        ValueError: ``image_size`` or ``multiple`` is not positive.
        DataError: ``keep_aspect`` with no paths, or none of the probed headers is readable.
    """
    if image_size <= 0 or multiple <= 0:
        raise ValueError(
            f"image_size and multiple must be positive, got image_size={image_size}, "
            f"multiple={multiple}"
        )
    if not keep_aspect:
        return (image_size, image_size)
    if not paths:
        raise DataError("resolve_size: no image paths to measure the aspect ratio from")

    probes = np.unique(
        np.linspace(0, len(paths) - 1, num=min(_ASPECT_PROBES, len(paths))).round().astype(int)
    )
    ratios: list[float] = []  # H / W
    for index in probes:
        try:
            height, width = read_image_size(paths[int(index)])
            check_image_size(paths[int(index)], (height, width))
        except DataError as err:
            logger.warning("resolve_size: %s", err)
            continue
        ratios.append(height / width)
    if not ratios:
        raise DataError(
            f"resolve_size: none of {len(probes)} probed images is readable, first "
            f"{paths[int(probes[0])]}"
        )
    spread = float(np.quantile(ratios, 0.9) / np.quantile(ratios, 0.1))
    if spread > _ASPECT_SPREAD:
        # One tensor size cannot keep aspect ratios that differ across the set (magnetic_tile's
        # run from 0.4 to 2.3): a median shape would distort most images more than a square.
        logger.info(
            "resolve_size: aspect ratios vary %.1fx across the set; resizing to a square", spread
        )
        return (image_size, image_size)
    ratio = float(np.median(ratios))
    if ratio >= 1.0:  # tall: width is the short side
        size = (
            _round_to_multiple(image_size * ratio, multiple),
            _round_to_multiple(image_size, multiple),
        )
    else:
        size = (
            _round_to_multiple(image_size, multiple),
            _round_to_multiple(image_size / ratio, multiple),
        )
    logger.debug("resolve_size: median H/W %.3f over %d images -> %s", ratio, len(ratios), size)
    return size


def median_image_size(paths: Sequence[Path], *, probes: int = 16) -> tuple[int, int]:
    """Median ``(H, W)`` of up to `probes` files spread evenly over `paths`, from their
    headers (no decode); unreadable headers are skipped with a warning.

    Raises:
        DataError: no path, or none of the probed headers is readable.
    """
    if not paths:
        raise DataError("no image to measure")
    picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(probes, len(paths)))]
    sizes = []
    for path in picks:
        try:
            sizes.append(read_image_size(path))
        except ImageReadError as err:
            logger.warning("image size: %s", err)
    if not sizes:
        raise DataError(f"no readable image header among {len(picks)} probed files")
    h, w = np.median(np.array(sizes), axis=0)
    return int(h), int(w)
