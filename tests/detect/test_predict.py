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
from feddymem.detect.overlay import color_scale, overlay
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
    summary = predict_files(det, files, tmp_path / "out")
    assert sorted(decoded) == sorted(files)  # once each
    assert summary.scored == len(files) and not summary.skipped
    assert Image.open(tmp_path / "out" / "wide_overlay.png").size == (96, 40)
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
