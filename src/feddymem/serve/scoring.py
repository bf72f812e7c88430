"""A batch of decoded images -> scores, decisions and (on request) anomaly maps; overlays.

Pure functions of a `LoadedModel` and pixels: the batcher and the folder watcher call them on
the scoring thread. Images are resized to the model's input as `predict` does (Pillow,
bilinear), so the service's scores are `predict`'s.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from feddymem.detect.overlay import Legend, color_scale, overlay_with_legend, resample_map
from feddymem.serve.models import LoadedModel


@dataclass(frozen=True)
class Scored:
    """One image's result and the model version that gave it."""

    score: float
    threshold: float
    anomalous: bool
    model: LoadedModel
    amap: torch.Tensor | None  # (H_in, W_in) when asked for

    @property
    def version(self) -> str:
        return self.model.version


def resize(pixels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> (H, W, 3) uint8, bilinear (Pillow, as the data loader does)."""
    height, width = hw
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def score_batch(
    model: LoadedModel, images: Sequence[np.ndarray], *, want_maps: Sequence[bool]
) -> list[Scored]:
    """Score `images` ((h, w, 3) uint8, any size) as one batch on `model`."""
    hw = model.image_hw
    stacked = np.stack([resize(img, hw) for img in images]).transpose(0, 3, 1, 2)
    batch = torch.from_numpy(stacked.astype(np.float32) / np.float32(255.0))
    pred = model.detector.predict(batch)
    return [
        Scored(
            score=float(pred.image_scores[i]),
            threshold=float(pred.threshold),
            anomalous=bool(pred.is_anomalous[i]),
            model=model,
            amap=pred.anomaly_maps[i].clone() if want_maps[i] else None,
        )
        for i in range(len(images))
    ]


def overlay_image(result: Scored, image: np.ndarray) -> np.ndarray:
    """`predict`'s overlay of one scored image: the anomaly map over the image at its own size,
    in the colours of the model that made it, with the legend below (decision, score against
    the threshold, colour bar)."""
    assert result.amap is not None
    detector = result.model.detector
    vmin, vmax = color_scale(threshold=detector.threshold_, map_floor=detector.map_floor_)
    full = resample_map(result.amap, image.shape[:2])
    legend = Legend(
        vmin=vmin,
        vmax=vmax or float(full.max()),
        score=result.score,
        threshold=result.threshold,
        anomalous=result.anomalous,
    )
    return np.asarray(overlay_with_legend(image, full, legend))


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_jpeg(image: np.ndarray, *, side: int = 96) -> bytes:
    """A small JPEG of `image` for the page's feed."""
    img = Image.fromarray(image)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
