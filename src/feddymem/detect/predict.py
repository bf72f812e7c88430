"""Scoring image files with a fitted detector: decisions, heat-map overlays and a CSV.

What `feddymem predict` does, as a library call: every file is decoded once (at its own size,
or at a reduced JPEG scale never below the model's input), scored at the model's input size,
and its anomaly map resampled onto the image as the file holds it.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from feddymem.data import LoadReport, Sample
from feddymem.data.layouts import IMAGE_EXTENSIONS
from feddymem.detect.base import Detector
from feddymem.detect.overlay import color_scale, overlay, resample_map

log = logging.getLogger(__name__)

CSV_FIELDS = ("path", "score", "threshold", "anomalous", "overlay")


@dataclass
class PredictSummary:
    """What a predict run wrote: one CSV row per input, scored or skipped."""

    rows: list[dict[str, str | int]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    csv_path: Path | None = None

    @property
    def scored(self) -> int:
        return len(self.rows) - len(self.skipped)

    @property
    def flagged(self) -> int:
        return sum(1 for r in self.rows if r["anomalous"] == 1)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The files named in `paths`, each folder replaced by its image files in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            files.append(path)
    return files


def _full_size(original: np.ndarray, full_hw: tuple[int, int]) -> np.ndarray:
    """The decoded image at its file's own size (a JPEG decoded at a reduced scale is
    resampled up)."""
    if original.shape[:2] == tuple(full_hw):
        return original
    height, width = full_hw
    return np.asarray(Image.fromarray(original).resize((width, height), Image.Resampling.BILINEAR))


def predict_files(
    detector: Detector,
    files: Sequence[Path],
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Score `files`; write `<out>/<stem>_overlay.png` for each and `<out>/scores.csv`.

    Unreadable files are skipped, named in the log and listed in the CSV.
    """
    out.mkdir(parents=True, exist_ok=True)
    samples = [Sample(path=p, label=0, defect="unknown") for p in files]
    report = LoadReport(loaded=0, skipped=[])
    summary = PredictSummary()
    vmin, vmax = color_scale(threshold=detector.threshold_, map_floor=detector.map_floor_)
    for batch in detector.batches(samples, report=report, keep_originals=True):
        pred = detector.predict(batch.images)
        assert batch.originals is not None and batch.full_hw is not None
        for i, sample in enumerate(batch.samples):
            image = _full_size(batch.originals[i], batch.full_hw[i])
            amap = resample_map(pred.anomaly_maps[i], image.shape[:2])
            name = f"{sample.path.stem}_overlay.png"
            Image.fromarray(overlay(image, amap, vmin=vmin, vmax=vmax or float(amap.max()))).save(
                out / name
            )
            summary.rows.append(
                {
                    "path": str(sample.path),
                    "score": f"{float(pred.image_scores[i]):.6f}",
                    "threshold": f"{pred.threshold:.6f}",
                    "anomalous": int(bool(pred.is_anomalous[i])),
                    "overlay": name,
                }
            )
        if progress is not None:
            progress(len(batch.samples))
    for path, reason in report.skipped:
        summary.rows.append(
            {
                "path": str(path),
                "score": "",
                "threshold": "",
                "anomalous": "",
                "overlay": f"skipped: {reason}",
            }
        )
    summary.skipped = list(report.skipped)
    summary.csv_path = out / "scores.csv"
    with summary.csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(summary.rows)
    return summary
