"""`benchmarks/detector.py --only tilespeed`: end-to-end scoring speed of large images, tiled
against resized, measured back to back in one run (the resized rate is the reference).

Both detectors are fitted on the same normal images; each then scores the same files end to end
(decode, resize or tile, features, k-NN, stitching, maps, image scores) `repeats` times, and the
run reports each one's median images/s, their ratio, the peak RSS and the machine's load.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from feddymem.data import Sample
from feddymem.detect.base import Detector
from feddymem.detect.detector import PatchCoreDetector


def _items(det: Any) -> int:
    """PatchCore: the memory's items; PaDiM: its Gaussians (grid positions)."""
    kept = getattr(det, "memory_", None)
    kept = getattr(det, "precision_", None) if kept is None else kept
    return 0 if kept is None else int(kept.shape[0])


def _rate(det: Detector, files: Sequence[Sample], repeats: int) -> list[float]:
    det.score_samples(files[: det.config.batch_size])  # warm-up: tracing, allocator
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        det.score_samples(files)
        rates.append(len(files) / (time.perf_counter() - t0))
    return rates


def tiled_speed(
    train: Sequence[Sample],
    files: Sequence[Sample],
    cfg: Any,
    *,
    repeats: int = 3,
    tile_scales: Sequence[float] = (1.0,),
    make: Callable[[Any], Detector] = PatchCoreDetector,
    native_size: int | None = None,
) -> dict[str, object]:
    """Images/s of `files` scored resized (cfg with tile off), tiled at each scale, and, with
    `native_size`, whole at that short side (the native one: no tiles), by the detector `make`
    builds from a config (PatchCore, or PaDiM with a GaussianConfig)."""
    out: dict[str, object] = {"load_before": os.getloadavg(), "images": len(files)}
    resized = make(dataclasses.replace(cfg, tile="off")).fit(train)
    ref = _rate(resized, files, repeats)
    out["resized"] = {
        "image_hw": list(resized.image_hw_ or ()),
        "memory_items": _items(resized),
        "images_per_s": round(statistics.median(ref), 2),
        "runs": [round(r, 2) for r in ref],
    }
    for scale in tile_scales:
        tiled = make(dataclasses.replace(cfg, tile="on", tile_scale=scale)).fit(train)
        rates = _rate(tiled, files, repeats)
        assert tiled.tiling_ is not None
        out[f"tiled_scale_{scale}"] = {
            "image_hw": list(tiled.tiling_.image_hw),
            "tile": tiled.tiling_.tile,
            "overlap": tiled.tiling_.overlap,
            "tiles_per_image": tiled.tiling_.grid(tiled.extractor.stride).n_tiles,
            "memory_items": _items(tiled),
            "gaussians": getattr(tiled, "tile_gaussians_", None),
            "images_per_s": round(statistics.median(rates), 2),
            "runs": [round(r, 2) for r in rates],
            "tiled_over_resized": round(statistics.median(rates) / statistics.median(ref), 3),
        }
    if native_size:
        # native resolution without tiles: the whole image through the backbone in one pass
        whole = make(dataclasses.replace(cfg, tile="off", image_size=native_size)).fit(train)
        rates = _rate(whole, files, repeats)
        out[f"whole_{native_size}"] = {
            "image_hw": list(whole.image_hw_ or ()),
            "memory_items": _items(whole),
            "images_per_s": round(statistics.median(rates), 2),
            "runs": [round(r, 2) for r in rates],
            "whole_over_resized": round(statistics.median(rates) / statistics.median(ref), 3),
        }
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    out["load_after"] = os.getloadavg()
    return out
