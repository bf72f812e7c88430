"""Turning lists of samples into batches of tensors.

Files are decoded and resized in a thread pool (Pillow releases the GIL while it works), then
stacked and turned into tensors once per batch.  A file that cannot be read either stops the
run or is skipped and recorded, as the caller chooses; either way the message names the file.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from feddymem.data.images import (
    DataError,
    MaskSizeError,
    check_image_size,
    decode_image,
    read_mask,
)
from feddymem.data.layouts import Sample

__all__ = [
    "Batch",
    "LoadReport",
    "iter_batches",
    "load_all",
]

logger = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


@dataclass
class Batch:
    """Images of a batch with their masks and labels.

    Attributes:
        images: ``(B, 3, H, W)`` float32 RGB in ``[0, 1]``.
        masks: ``(B, 1, H, W)`` float32 in ``{0, 1}``; zeros for normal samples and wherever no
            mask was read.
        has_mask: ``(B,)`` bool, True where ``masks`` is ground truth usable for pixel metrics:
            every normal sample, and each anomalous sample whose mask file was read and is not
            all zero (at full resolution).  Anomalous samples without a mask, with an all-zero
            mask, or loaded with ``with_masks=False`` count for image-level metrics only.
        labels: ``(B,)`` int64, 0 normal, 1 anomalous.
        samples: The ``B`` samples, in order.
        originals: With ``keep_originals``: each image as decoded, ``(h, w, 3)`` uint8, before
            the resize (a large JPEG may be decoded at a reduced scale, never below the batch
            size), so a caller drawing over the image need not decode the file again.
        full_hw: With ``keep_originals``: each file's own ``(H, W)``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    has_mask: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    originals: list[np.ndarray] | None = None
    full_hw: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class LoadReport:
    """What a loading run read and what it skipped.

    Attributes:
        loaded: Samples delivered in batches.
        skipped: ``(path, reason)`` of each sample left out.
    """

    loaded: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Loaded:
    image: np.ndarray  # (H, W, 3) uint8, already at the batch size
    mask: np.ndarray | None  # (H, W) bool at the batch size; None when not read
    has_mask: bool
    original: np.ndarray | None = None  # (h, w, 3) uint8 as decoded, with keep_originals
    full_hw: tuple[int, int] | None = None


def _resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w, 3)`` uint8 -> ``(H, W, 3)`` uint8, bilinear with antialias.

    Pillow's bilinear filter widens its support when shrinking, which is the antialiased
    bilinear resize, and it works on uint8 outside the GIL.  Per-image ``torch`` calls from
    several threads were an order of magnitude slower here (intra-op thread contention).
    """
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool -> ``(H, W)`` bool, nearest neighbour (pixel centres)."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    values = Image.fromarray(mask.astype(np.uint8) * np.uint8(255))
    return np.asarray(values.resize((width, height), Image.Resampling.NEAREST)) != 0


def _load_sample(
    sample: Sample, size: tuple[int, int], with_masks: bool, keep_original: bool = False
) -> _Loaded:
    """Decode, check and resize one sample; raises :class:`DataError` for a bad file."""
    if keep_original:
        # Decoded once, resized here: the same pixels as resizing before the RGB expansion.
        decoded = decode_image(sample.path, size_hint=size)
        check_image_size(sample.path, decoded.full_hw)
        return _Loaded(
            image=_resize_image(decoded.pixels, size),
            mask=None,
            has_mask=sample.label == 0,
            original=decoded.pixels,
            full_hw=decoded.full_hw,
        )
    decoded = decode_image(sample.path, size_hint=size, resize_to=size)
    check_image_size(sample.path, decoded.full_hw)
    image = _resize_image(decoded.pixels, size)
    if with_masks and sample.mask_path is not None:
        full = read_mask(sample.mask_path, expected_hw=decoded.full_hw, image_path=sample.path)
        return _Loaded(
            image=image,
            mask=_resize_mask(full, size),
            has_mask=sample.label == 0 or bool(full.any()),
        )
    return _Loaded(image=image, mask=None, has_mask=sample.label == 0)


def _collate(loaded: list[_Loaded], samples: list[Sample], size: tuple[int, int]) -> Batch:
    """Stack per-sample arrays and convert to tensors once per batch."""
    # (B, H, W, 3) uint8 -> (B, 3, H, W) float32; NumPy does this single-threaded, faster than
    # torch's pool for arrays this size while other threads decode.
    images = np.stack([item.image for item in loaded]).transpose(0, 3, 1, 2)
    images = images.astype(np.float32, order="C")
    images /= np.float32(255.0)
    masks = np.zeros((len(loaded), 1, *size), dtype=np.float32)
    for row, item in enumerate(loaded):
        if item.mask is not None:
            masks[row, 0] = item.mask
    return Batch(
        images=torch.from_numpy(images),
        masks=torch.from_numpy(masks),
        has_mask=torch.tensor([item.has_mask for item in loaded], dtype=torch.bool),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        samples=samples,
        originals=[item.original for item in loaded if item.original is not None] or None,
        full_hw=[item.full_hw for item in loaded if item.full_hw is not None] or None,
    )


def _empty_batch(size: tuple[int, int]) -> Batch:
    return Batch(
        images=torch.zeros((0, 3, *size), dtype=torch.float32),
        masks=torch.zeros((0, 1, *size), dtype=torch.float32),
        has_mask=torch.zeros(0, dtype=torch.bool),
        labels=torch.zeros(0, dtype=torch.long),
        samples=[],
    )


def _check_options(size: tuple[int, int], batch_size: int, num_threads: int, on_error: str) -> None:
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be a positive (H, W), got {size}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_threads <= 0:
        raise ValueError(f"num_threads must be positive, got {num_threads}")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def iter_batches(
    samples: Sequence[Sample],
    *,
    size: tuple[int, int],
    batch_size: int,
    with_masks: bool,
    num_threads: int = 2,
    on_error: OnError = "skip",
    report: LoadReport | None = None,
    keep_originals: bool = False,
) -> Iterator[Batch]:
    """Decode samples in a thread pool and yield them as batches, in order.

    Images are resized bilinearly with antialiasing, masks by nearest neighbour, both to
    ``size``.  A mask must have its image's full-resolution size.  Decoding runs ahead of the
    consumer by a few batches at most.

    Args:
        samples: Samples to load.
        size: ``(H, W)`` of every output image (see :func:`feddymem.data.sizing.resolve_size`).
        batch_size: Samples per batch; skipped samples are made up by the following ones, so
            only the last batch may be smaller.
        with_masks: Read ground-truth masks; otherwise masks are zeros and only normal samples
            have ``has_mask`` True.
        num_threads: Decoding threads.
        on_error: ``"skip"``: log a warning naming the file and the reason, record it in
            ``report`` and go on; ``"raise"``: raise the error.
        report: Filled in while iterating (counts and skipped files).
        keep_originals: Also hand back each image as decoded and its file's size
            (``Batch.originals``, ``Batch.full_hw``); masks are then not read.

    Returns:
        An iterator of batches with ``images`` ``(B, 3, H, W)``, ``masks`` ``(B, 1, H, W)``,
        ``has_mask``, ``labels`` ``(B,)`` and ``samples``; never an empty batch.

    Raises:
        DataError: a sample cannot be loaded and ``on_error="raise"``; a mask whose size is
            not its image's (:class:`MaskSizeError`) whatever ``on_error`` says.
        ValueError: an option is out of range.
    """
    target = (int(size[0]), int(size[1]))
    _check_options(target, batch_size, num_threads, on_error)
    # Options are checked above, on the call; the generator below starts at the first next().
    return _generate_batches(
        samples,
        size=target,
        batch_size=batch_size,
        with_masks=with_masks,
        num_threads=num_threads,
        on_error=on_error,
        report=report if report is not None else LoadReport(),
        keep_originals=keep_originals,
    )


def _generate_batches(
    samples: Sequence[Sample],
    *,
    size: tuple[int, int],
    batch_size: int,
    with_masks: bool,
    num_threads: int,
    on_error: OnError,
    report: LoadReport,
    keep_originals: bool = False,
) -> Iterator[Batch]:
    """The generator behind :func:`iter_batches` (options already checked)."""
    target = size
    tally = report
    ahead = max(2 * batch_size, 4 * num_threads)

    pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="feddymem-load")
    pending: deque[tuple[Sample, Future[_Loaded]]] = deque()
    queue = iter(samples)
    skipped_before = len(tally.skipped)
    try:

        def fill() -> None:
            while len(pending) < ahead:
                sample = next(queue, None)
                if sample is None:
                    return
                future = pool.submit(_load_sample, sample, target, with_masks, keep_originals)
                pending.append((sample, future))

        fill()
        chunk: list[_Loaded] = []
        chunk_samples: list[Sample] = []
        while pending:
            sample, future = pending.popleft()
            fill()
            try:
                item = future.result()
            except DataError as err:
                if on_error == "raise" or isinstance(err, MaskSizeError):
                    raise
                logger.warning("skipping %s: %s", sample.path, err)
                tally.skipped.append((sample.path, str(err)))
                continue
            chunk.append(item)
            chunk_samples.append(sample)
            if len(chunk) == batch_size:
                tally.loaded += len(chunk)
                yield _collate(chunk, chunk_samples, target)
                chunk, chunk_samples = [], []
        if chunk:
            tally.loaded += len(chunk)
            yield _collate(chunk, chunk_samples, target)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        skipped = len(tally.skipped) - skipped_before
        if skipped:
            logger.warning("skipped %d unreadable samples; see the load report", skipped)


def load_all(
    samples: Sequence[Sample],
    *,
    size: tuple[int, int],
    with_masks: bool,
    num_threads: int = 2,
    on_error: OnError = "skip",
    report: LoadReport | None = None,
) -> Batch:
    """Load all samples into one batch; see :func:`iter_batches` for the options.

    Returns:
        One batch of every loaded sample, empty (``B == 0``) when none could be loaded.
    """
    batches = list(
        iter_batches(
            samples,
            size=size,
            batch_size=max(1, min(len(samples), 64)),
            with_masks=with_masks,
            num_threads=num_threads,
            on_error=on_error,
            report=report,
        )
    )
    if not batches:
        return _empty_batch((int(size[0]), int(size[1])))
    return Batch(
        images=torch.cat([b.images for b in batches]),
        masks=torch.cat([b.masks for b in batches]),
        has_mask=torch.cat([b.has_mask for b in batches]),
        labels=torch.cat([b.labels for b in batches]),
        samples=[s for b in batches for s in b.samples],
    )
