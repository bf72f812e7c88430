"""Scoring image files with a fitted detector: decisions, heat-map overlays and a CSV.

What `feddymem predict` does, as a library call: every file is decoded once (at its own size,
or at a reduced JPEG scale never below the model's input), scored at the model's input size,
and its anomaly map resampled onto the image as the file holds it, with a legend (colour bar,
score against threshold, decision). Each overlay keeps its input's relative path, so inputs
with one file name in two folders never overwrite each other; every file is published whole
(temporary file, then rename).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from feddymem.data import Batch, DataError, LoadReport, Sample, read_image_size
from feddymem.data.layouts import IMAGE_EXTENSIONS
from feddymem.detect.base import Detector
from feddymem.detect.overlay import Legend, color_scale, overlay_with_legend
from feddymem.outputs import atomic_open, check_output_dir

log = logging.getLogger(__name__)

CSV_FIELDS = ("path", "score", "threshold", "anomalous", "overlay")
# Pixels of the images decoded and held at once (about 100 MB of RGB at 32 Mpx).
PIXEL_BUDGET = 32_000_000


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
    """The files named in `paths`, each folder replaced by its image files in name order, each
    file once.

    Raises:
        DataError: a path that does not exist (named).
    """
    files: list[Path] = []
    seen: set[str] = set()
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                log.warning("%s holds no image files (%s)", path, ", ".join(IMAGE_EXTENSIONS))
        elif path.exists():
            found = [path]
        else:
            raise DataError(f"{path}: no such file or folder")
        for file in found:
            key = os.path.abspath(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def overlay_name(path: Path, *, cwd: Path | None = None) -> Path:
    """Where the overlay of image `path` goes, relative to the output folder: the input's own
    path (relative to `cwd` when inside it, else from the root) with ``_overlay.png`` for its
    suffix (``.png``) or after its name (other formats), so two inputs never share a name and a
    name never depends on the other inputs."""
    absolute = Path(os.path.abspath(path))
    base = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    try:
        rel = absolute.relative_to(base)
    except ValueError:
        rel = absolute.relative_to(absolute.anchor)
    name = f"{rel.stem}_overlay.png" if rel.suffix.lower() == ".png" else f"{rel.name}_overlay.png"
    return rel.parent / name


def overlay_names(files: Sequence[Path]) -> list[Path]:
    """`overlay_name` of each file; two files given one name is an error naming both."""
    names = [overlay_name(f) for f in files]
    owner: dict[Path, Path] = {}
    for file, name in zip(files, names, strict=True):
        if name in owner:
            raise DataError(f"{owner[name]} and {file} would share the overlay {name}")
        owner[name] = file
    return names


def _chunks_by_pixels(files: Sequence[Path], budget: int) -> list[list[int]]:
    """Indices of `files` in runs of at most `budget` pixels (read from the headers; a file
    alone may exceed it), so the decoded images held at once stay bounded."""
    chunks: list[list[int]] = [[]]
    total = 0
    for i, file in enumerate(files):
        try:
            height, width = read_image_size(file)
            pixels = height * width
        except DataError:
            pixels = 0  # skipped when loaded, with its reason
        if chunks[-1] and total + pixels > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += pixels
    return [c for c in chunks if c]


def _full_size(original: np.ndarray, full_hw: tuple[int, int]) -> np.ndarray:
    """The decoded image at its file's own size (a JPEG decoded at a reduced scale is
    resampled up)."""
    if original.shape[:2] == tuple(full_hw):
        return original
    height, width = full_hw
    return np.asarray(Image.fromarray(original).resize((width, height), Image.Resampling.BILINEAR))


def _save_png(picture: Image.Image, path: Path) -> None:
    """Write `picture` to `path` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        picture.save(fh, format="PNG")


def _write_csv(rows: Sequence[dict[str, str | int]], path: Path) -> None:
    """The CSV of decisions, replacing `path` only once it is whole (file names that are not
    UTF-8 are written as their own bytes)."""
    with atomic_open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(rows)


def predict_files(
    detector: Detector,
    files: Sequence[Path],
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
    pixel_budget: int = PIXEL_BUDGET,
) -> PredictSummary:
    """Score `files`; write each overlay (with its legend) at `out` / `overlay_name(file)` and
    `<out>/scores.csv`.

    Unreadable files are skipped, named in the log and listed in the CSV. Images are decoded a
    run of at most `pixel_budget` pixels at a time.
    """
    check_output_dir(out)
    names = overlay_names(files)
    report = LoadReport(loaded=0, skipped=[])
    summary = PredictSummary()
    vmin, vmax = color_scale(threshold=detector.threshold_, map_floor=detector.map_floor_)
    for chunk in _chunks_by_pixels(files, pixel_budget):
        samples = [Sample(path=files[i], label=0, defect="unknown") for i in chunk]
        name_of = {files[i]: names[i] for i in chunk}
        for batch in detector.batches(samples, report=report, keep_originals=True):
            _draw_batch(detector, batch, out, name_of, (vmin, vmax), summary)
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
    _write_csv(summary.rows, summary.csv_path)
    return summary


def _draw_batch(
    detector: Detector,
    batch: Batch,
    out: Path,
    name_of: dict[Path, Path],
    scale: tuple[float, float | None],
    summary: PredictSummary,
) -> None:
    """Score one batch, write its overlays and add its CSV rows to `summary`."""
    pred = detector.predict(batch.images)
    assert batch.originals is not None and batch.full_hw is not None
    vmin, vmax = scale
    for i, sample in enumerate(batch.samples):
        image = _full_size(batch.originals[i], batch.full_hw[i])
        amap = pred.anomaly_maps[i].numpy()
        legend = Legend(
            vmin=vmin,
            vmax=vmax or float(amap.max()),
            score=float(pred.image_scores[i]),
            threshold=pred.threshold,
            anomalous=bool(pred.is_anomalous[i]),
        )
        name = name_of[sample.path]
        _save_png(overlay_with_legend(image, amap, legend), out / name)
        summary.rows.append(
            {
                "path": str(sample.path),
                "score": f"{float(pred.image_scores[i]):.6f}",
                "threshold": f"{pred.threshold:.6f}",
                "anomalous": int(bool(pred.is_anomalous[i])),
                "overlay": str(name),
            }
        )
