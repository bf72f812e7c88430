"""predict_files: one decode per file, overlays at the file's own size, the CSV of decisions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddymem.config import DetectorConfig
from feddymem.data import scan
from feddymem.detect.detector import PatchCoreDetector
from feddymem.detect.overlay import _legend_layout, color_scale, overlay
from feddymem.detect.predict import image_files, predict_files


def test_each_file_is_decoded_once_and_overlays_keep_its_size(
    texture_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feddymem.data import images, loader

    det = PatchCoreDetector(DetectorConfig(image_size=64, coreset_ratio=0.1)).fit(
        scan(texture_tree).train
    )
    wide = tmp_path / "wide.png"
    spot = sorted((texture_tree / "test" / "spot").iterdir())[0]
    Image.open(spot).resize((96, 40)).save(wide)
    files = image_files([texture_tree / "test" / "spot", wide])
    decoded: list[Path] = []
    real = images.decode_image

    def counting(path, **kw):  # type: ignore[no-untyped-def]
        decoded.append(Path(path))
        return real(path, **kw)

    monkeypatch.setattr(loader, "decode_image", counting)
    monkeypatch.chdir(tmp_path)  # overlays keep the inputs' paths relative to here
    summary = predict_files(det, files, tmp_path / "out")
    assert sorted(decoded) == sorted(files)  # once each
    assert summary.scored == len(files) and not summary.skipped
    canvas_w, legend_h, _ = _legend_layout(96)  # the picture, then its legend below it
    assert Image.open(tmp_path / "out" / "wide_overlay.png").size == (canvas_w, 40 + legend_h)
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    # the decisions are the detector's own on the same images
    batch = next(det.batches([s for s in scan(texture_tree).test if s.path == spot]))
    assert float(rows[0]["score"]) == pytest.approx(
        float(det.score(batch.images).image_scores[0]), rel=1e-5
    )


def test_color_scale_and_overlay() -> None:
    assert color_scale(threshold=2.0, map_floor=1.0) == (1.0, 3.0)
    assert color_scale(threshold=2.0, map_floor=5.0) == (0.0, 3.0)  # a floor above red is ignored
    assert color_scale(threshold=None, map_floor=1.0) == (0.0, None)
    image = np.full((4, 5, 3), 128, np.uint8)
    amap = np.linspace(0, 1, 20).reshape(4, 5)
    out = overlay(image, amap, vmin=0.0, vmax=1.0)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, 2] > out[0, 0, 0] and out[-1, -1, 0] > out[-1, -1, 2]  # blue low, red high


def test_overlay_resampling_in_bands_matches_whole_image_interpolation() -> None:
    import torch

    from feddymem.detect.overlay import _RowResampler

    amap = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    whole = torch.nn.functional.interpolate(
        torch.from_numpy(amap)[None, None], size=(53, 41), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    rows = _RowResampler(amap, (53, 41))
    banded = np.concatenate([rows.rows(a, min(a + 10, 53)) for a in range(0, 53, 10)])
    assert np.allclose(banded, whole, atol=1e-5)


def test_overlay_memory_is_bounded_by_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3000x3000 overlay's arrays are a few bands of rows (was: a float64 colour array of
    the whole picture, 8 bytes x 4 channels a pixel); small bands are forced."""
    import tracemalloc

    from feddymem.detect import overlay as ov

    monkeypatch.setattr(ov, "BAND_PIXELS", 1 << 18)
    side = 3000
    image = np.full((side, side, 3), 100, np.uint8)
    amap = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    legend = ov.Legend(vmin=0.0, vmax=1.0, score=0.7, threshold=0.5, anomalous=True)
    ov.jet_lut()  # matplotlib's import is not the overlay's
    tracemalloc.start()
    picture = ov.overlay_with_legend(image, amap, legend)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert picture.size[1] > side
    # a band's working set (about 30 bytes a pixel), whatever the picture's size; a float64
    # RGBA colour array of the whole picture would be 10x the image
    assert peak < 40 * (1 << 18) < image.nbytes / 2


def test_overlay_draws_its_legend() -> None:
    from feddymem.detect.overlay import Legend, _legend_layout, overlay_with_legend

    image = np.full((80, 100, 3), 128, np.uint8)
    amap = np.zeros((8, 10), np.float32)
    normal = overlay_with_legend(
        image, amap, Legend(vmin=0, vmax=3, score=1, threshold=2, anomalous=False)
    )
    flagged = overlay_with_legend(
        image, amap, Legend(vmin=0, vmax=3, score=2.5, threshold=2, anomalous=True)
    )
    width, legend_h, font = _legend_layout(100)
    assert normal.size == (width, 80 + legend_h)
    a, b = np.asarray(normal)[80:], np.asarray(flagged)[80:]
    assert not np.array_equal(a, b)  # the decision line differs
    # the colour bar runs from blue to red across the legend
    row = a[2 * (font // 2) + font + font // 2]  # the bar's middle row
    assert row[20, 2] > row[20, 0] and row[width - 20, 0] > row[width - 20, 2]


def test_images_are_decoded_in_runs_bounded_by_pixels(tmp_path: Path) -> None:
    from feddymem.detect.predict import _chunks_by_pixels

    sizes = [(40, 40), (40, 40), (80, 80), (40, 40)]  # 1600, 1600, 6400, 1600 pixels
    files = []
    for i, (h, w) in enumerate(sizes):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(files[-1])
    files.append(tmp_path / "unreadable.png")
    files[-1].write_bytes(b"junk")
    # a file larger than the budget goes alone; the others fill runs up to it
    assert _chunks_by_pixels(files, budget=4000) == [[0, 1], [2], [3, 4]]
    assert _chunks_by_pixels(files, budget=10**9) == [[0, 1, 2, 3, 4]]
