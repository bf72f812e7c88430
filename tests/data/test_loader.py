"""Batching samples: sizes, shapes, masks, skipped files, and the real magnetic-tile set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feddymem.data.images import ImageReadError, MaskSizeError
from feddymem.data.layouts import Sample, scan_mvtec
from feddymem.data.loader import LoadReport, iter_batches, load_all
from feddymem.data.sizing import resolve_size

H, W = 32, 48
SIZE = (16, 24)


def _image(path: Path, value: int = 128, hw: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*hw, 3), value, dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, *, hw: tuple[int, int] = (H, W), empty: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(hw, dtype=np.uint8)
    if not empty:
        mask[:, : hw[1] // 2] = 255  # left half anomalous
    Image.fromarray(mask).save(path)
    return path


def _normal(path: Path, value: int = 128) -> Sample:
    return Sample(path=_image(path, value), label=0, defect="good")


def _anomalous(path: Path, mask: Path | None) -> Sample:
    return Sample(path=_image(path, 200), label=1, defect="crack", mask_path=mask)


def test_iter_batches_shapes_dtypes_and_order(tmp_path: Path) -> None:
    samples = [_normal(tmp_path / f"n{i}.png", value=40 * i) for i in range(5)]
    batches = list(iter_batches(samples, size=SIZE, batch_size=2, with_masks=True))
    assert [len(b) for b in batches] == [2, 2, 1]
    first = batches[0]
    assert first.images.shape == (2, 3, *SIZE)
    assert first.images.dtype == torch.float32
    assert first.masks.shape == (2, 1, *SIZE)
    assert first.masks.dtype == torch.float32
    assert first.has_mask.dtype == torch.bool
    assert first.labels.dtype == torch.long
    flat = [s for b in batches for s in b.samples]
    assert flat == samples
    # A constant image stays constant through the resize.
    levels = torch.cat([b.images[:, 0, 0, 0] for b in batches])
    torch.testing.assert_close(levels, torch.tensor([40.0 * i / 255 for i in range(5)]))
    assert all(float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0 for b in batches)


def test_masks_resized_by_nearest_and_has_mask_semantics(tmp_path: Path) -> None:
    samples = [
        _normal(tmp_path / "good.png"),
        _anomalous(tmp_path / "with_mask.png", _mask(tmp_path / "gt" / "with_mask_mask.png")),
        _anomalous(tmp_path / "no_mask.png", None),
        _anomalous(tmp_path / "zero.png", _mask(tmp_path / "gt" / "zero_mask.png", empty=True)),
    ]
    batch = load_all(samples, size=SIZE, with_masks=True)
    assert batch.has_mask.tolist() == [True, True, False, False]
    assert batch.labels.tolist() == [0, 1, 1, 1]
    assert set(torch.unique(batch.masks).tolist()) <= {0.0, 1.0}
    left, right = batch.masks[1, 0, :, : SIZE[1] // 2], batch.masks[1, 0, :, SIZE[1] // 2 :]
    assert bool((left == 1).all()) and bool((right == 0).all())
    assert float(batch.masks[[0, 2, 3]].sum()) == 0.0

    unmasked = load_all(samples, size=SIZE, with_masks=False)
    assert unmasked.has_mask.tolist() == [True, False, False, False]
    assert float(unmasked.masks.sum()) == 0.0


def test_corrupt_file_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    samples = [_normal(tmp_path / f"n{i}.png") for i in range(4)]
    cut = samples[1].path.read_bytes()
    samples[1].path.write_bytes(cut[: len(cut) // 2])
    report = LoadReport()
    with caplog.at_level(logging.WARNING, logger="feddymem.data.loader"):
        batches = list(
            iter_batches(samples, size=SIZE, batch_size=2, with_masks=False, report=report)
        )
    assert [len(b) for b in batches] == [2, 1]
    assert report.loaded == 3
    assert [path for path, _ in report.skipped] == [samples[1].path]
    assert "truncated" in report.skipped[0][1]
    assert "n1.png" in caplog.text

    with pytest.raises(ImageReadError, match=r"n1\.png"):
        list(iter_batches(samples, size=SIZE, batch_size=2, with_masks=False, on_error="raise"))


def test_mask_size_mismatch_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    # The README: a mask whose size differs from its image is an error (the image must not
    # silently leave every metric).
    wrong = _anomalous(tmp_path / "a.png", _mask(tmp_path / "a_mask.png", hw=(H + 2, W)))
    samples = [_normal(tmp_path / "n.png"), wrong]
    for on_error in ("skip", "raise"):
        with pytest.raises(MaskSizeError, match=r"a_mask\.png: mask size"):
            load_all(samples, size=SIZE, with_masks=True, on_error=on_error)  # type: ignore[arg-type]
    # Without masks the mask file is not read, so the sample loads.
    assert len(load_all(samples, size=SIZE, with_masks=False)) == 2


def test_images_below_the_minimum_size_are_skipped_and_named(tmp_path: Path) -> None:
    from feddymem.data.images import MIN_IMAGE_SIDE

    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((MIN_IMAGE_SIDE - 1, 64, 3), np.uint8)).save(thin)
    samples = [_normal(tmp_path / "n.png"), Sample(path=tiny, label=0, defect="good")]
    samples.append(Sample(path=thin, label=0, defect="good"))
    report = LoadReport()
    batch = load_all(samples, size=SIZE, with_masks=False, report=report)
    assert batch.samples == samples[:1]
    reasons = dict(report.skipped)
    assert "1x1 px, smaller than the minimum" in reasons[tiny]
    assert f"64x{MIN_IMAGE_SIDE - 1} px" in reasons[thin]
    # nor do they decide the aspect ratio of a data set
    assert resolve_size([tiny, samples[0].path], image_size=32, keep_aspect=True) == (
        resolve_size([samples[0].path], image_size=32, keep_aspect=True)
    )


def test_load_all_empty_and_bad_options(tmp_path: Path) -> None:
    empty = load_all([], size=SIZE, with_masks=True)
    assert empty.images.shape == (0, 3, *SIZE)
    assert empty.labels.shape == (0,)
    sample = _normal(tmp_path / "n.png")
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches([sample], size=SIZE, batch_size=0, with_masks=False)
    with pytest.raises(ValueError, match="on_error"):
        iter_batches([sample], size=SIZE, batch_size=1, with_masks=False, on_error="ignore")  # type: ignore[arg-type]


def test_large_jpeg_through_the_loader(tmp_path: Path) -> None:
    big = np.random.default_rng(0).integers(0, 256, size=(400, 600, 3), dtype=np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path)
    mask = _mask(tmp_path / "big_mask.png", hw=(400, 600))
    batch = load_all(
        [Sample(path=path, label=1, defect="crack", mask_path=mask)], size=SIZE, with_masks=True
    )
    assert batch.images.shape == (1, 3, *SIZE)
    assert batch.has_mask.tolist() == [True]


def _shared_data() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(os.environ.get("FEDDYMEM_SHARED_DATA", default))


@pytest.mark.slow
def test_real_magnetic_tile_counts_and_zero_masks() -> None:
    root = _shared_data() / "magnetic_tile"
    if not (root / "train" / "good").is_dir():
        pytest.skip(f"magnetic_tile not found at {root} (set FEDDYMEM_SHARED_DATA)")
    split = scan_mvtec(root)
    assert len(split.train) == 761
    assert sum(s.label == 0 for s in split.test) == 191
    assert sum(s.label == 1 for s in split.test) == 392
    assert all(s.mask_path is not None for s in split.test if s.label == 1)

    uneven = [s for s in split.test if s.defect == "uneven"]
    assert len(uneven) == 103
    report = LoadReport()
    batch = load_all(uneven, size=(64, 64), with_masks=True, num_threads=4, report=report)
    assert report.skipped == []
    flags = zip(batch.samples, batch.has_mask.tolist(), strict=True)
    no_mask = {s.path.stem for s, ok in flags if not ok}
    assert no_mask == {"exp4_num_45057", "exp4_num_352527", "exp3_num_45042", "exp4_num_124690"}
