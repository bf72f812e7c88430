"""Heat-map overlays: an anomaly map drawn over the image it was computed from, with its own
legend (a colour bar, the image's score against the threshold, and the decision).

Large images are drawn in bands of rows: the map is resampled to the image one band at a
time and coloured through a 256-entry uint8 lookup table, so an 8000x8000 picture costs its
own pixels and the output canvas, not a float64 colour array of the whole picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Rows drawn at a time: 512 rows of an 8000-wide image are 4M pixels of float32 work.
BAND_PIXELS = 1 << 22
# Share of the heat map in the blend, out of 256 (about 0.45; the image keeps the rest).
HEAT_WEIGHT = 115


@dataclass(frozen=True)
class Legend:
    """What an overlay's legend says: the colour scale and, when known, the image's score,
    the threshold it is compared with and the decision."""

    vmin: float
    vmax: float
    score: float | None = None
    threshold: float | None = None
    anomalous: bool | None = None


def color_scale(*, threshold: float | None, map_floor: float | None) -> tuple[float, float | None]:
    """``(vmin, vmax)`` of a model's heat maps.

    Blue at the held-out normals' median map value (``map_floor``; 0 for models saved without
    it), red at 1.5x the threshold, so normal texture stays cool and what scores like an
    anomalous image stands out.  ``vmax`` is None without a threshold: each map is then drawn
    to its own maximum.
    """
    vmax = threshold * 1.5 if threshold else None
    vmin = map_floor if map_floor is not None and vmax and map_floor < vmax else 0.0
    return vmin, vmax


@lru_cache(maxsize=1)
def jet_lut() -> np.ndarray:
    """(256, 3) uint8: matplotlib's jet colour map sampled at 256 levels."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def resample_map(amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """An ``(H_in, W_in)`` anomaly map resampled bilinearly to ``size`` = ``(H, W)`` whole
    (for pictures of moderate size; `overlay` resamples large ones band by band itself)."""
    return torch.nn.functional.interpolate(
        amap[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()


class _RowResampler:
    """Bilinear resampling (as ``interpolate(..., align_corners=False)``) of a small map to
    ``(H, W)``, handed out band by band: the width is resampled once, the height per band."""

    def __init__(self, amap: np.ndarray, size: tuple[int, int]) -> None:
        height, width = size
        small = torch.as_tensor(np.asarray(amap, dtype=np.float32))
        # along the width only (the height kept): (H_in, W)
        self.wide = torch.nn.functional.interpolate(
            small[None, None], size=(small.shape[0], width), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        h_in = small.shape[0]
        src = (np.arange(height, dtype=np.float64) + 0.5) * (h_in / height) - 0.5
        src = np.clip(src, 0.0, None)
        self.lo = np.minimum(np.floor(src).astype(np.int64), h_in - 1)
        self.hi = np.minimum(self.lo + 1, h_in - 1)
        self.frac = (src - self.lo).astype(np.float32)[:, None]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the resampled map, (stop - start, W) float32."""
        lo, hi, frac = self.lo[start:stop], self.hi[start:stop], self.frac[start:stop]
        return self.wide[lo] * (1.0 - frac) + self.wide[hi] * frac


def _levels(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values -> colour-table indices 0..255 (uint8); blue at `vmin`, red at `vmax`."""
    scale = 255.0 / max(vmax - vmin, 1e-12)
    return np.clip((values - vmin) * scale + 0.5, 0.0, 255.0).astype(np.uint8)


def blended_bands(
    image: np.ndarray, amap: np.ndarray, *, vmin: float, vmax: float
) -> Iterator[tuple[int, np.ndarray]]:
    """The heat map of `amap` (any small (h, w) map, resampled here) blended over `image`
    (H, W, 3) uint8, as ``(first row, (rows, W, 3) uint8)`` bands of about `BAND_PIXELS`."""
    height, width = image.shape[:2]
    lut = jet_lut()
    resampler = _RowResampler(amap, (height, width))
    band = max(1, BAND_PIXELS // max(width, 1))
    for start in range(0, height, band):
        stop = min(height, start + band)
        heat = lut[_levels(resampler.rows(start, stop), vmin, vmax)].astype(np.uint16)
        mixed = image[start:stop].astype(np.uint16) * (256 - HEAT_WEIGHT) + heat * HEAT_WEIGHT
        yield start, (mixed >> 8).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, *, vmin: float, vmax: float) -> np.ndarray:
    """Heat map (jet, blue at `vmin`, red at `vmax`) blended over the image, both (H, W, 3)
    uint8; `amap` is (H, W) or any smaller map (resampled bilinearly)."""
    out = np.empty_like(image)
    for start, rows in blended_bands(image, amap, vmin=vmin, vmax=vmax):
        out[start : start + rows.shape[0]] = rows
    return out


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _legend_layout(width: int) -> tuple[int, int, int]:
    """(canvas width, legend height, font size) for an image `width` pixels wide: the legend
    is readable on a thumbnail and in proportion on a large picture."""
    canvas_w = max(width, 360)
    font = max(12, canvas_w // 45)
    return canvas_w, 4 * font + 3 * (font // 2), font


def _draw_legend(band: Image.Image, font_px: int, legend: Legend) -> None:
    """The legend drawn on `band` (the strip below the picture): the decision line, then the
    colour bar with its scale (and the threshold marked on it)."""
    draw = ImageDraw.Draw(band)
    font, pad = _font(font_px), font_px // 2
    width = band.width
    if legend.score is not None and legend.threshold is not None:
        flagged = bool(legend.anomalous)
        verdict = "ANOMALOUS" if flagged else "normal"
        sign = ">" if flagged else "<="
        text = f"{verdict}: score {legend.score:.3f} {sign} threshold {legend.threshold:.3f}"
        colour = (255, 80, 80) if flagged else (90, 220, 90)
    else:
        text, colour = "score not available", (220, 220, 220)
    draw.text((pad, pad), text, fill=colour, font=font)
    bar_top, bar_h = pad * 2 + font_px, font_px
    bar_left, bar_right = pad, width - pad
    ramp = np.linspace(0, 255, max(1, bar_right - bar_left)).astype(np.uint8)
    bar = np.repeat(jet_lut()[ramp][None], bar_h, axis=0)
    band.paste(Image.fromarray(bar), (bar_left, bar_top))
    label_y = bar_top + bar_h + 2
    span = max(legend.vmax - legend.vmin, 1e-12)

    def x_of(value: float) -> int:
        return bar_left + round((value - legend.vmin) / span * (bar_right - bar_left - 1))

    draw.text((bar_left, label_y), f"{legend.vmin:.3g}", fill=(230, 230, 230), font=font)
    right = f"{legend.vmax:.3g}"
    draw.text(
        (bar_right - draw.textlength(right, font=font), label_y),
        right,
        fill=(230, 230, 230),
        font=font,
    )
    if legend.threshold is not None and legend.vmin < legend.threshold < legend.vmax:
        x = x_of(legend.threshold)
        draw.line([(x, bar_top - 2), (x, bar_top + bar_h + 1)], fill=(255, 255, 255), width=2)
        draw.text((x + 3, label_y), "threshold", fill=(255, 255, 255), font=font)


def overlay_with_legend(image: np.ndarray, amap: np.ndarray, legend: Legend) -> Image.Image:
    """The overlay of `amap` on `image` (H, W, 3) uint8 with the legend drawn below it on the
    same picture: the decision, the score against the threshold and the colour bar. The
    picture is filled band by band (no full-size array besides `image` and the result)."""
    height, width = image.shape[:2]
    canvas_w, legend_h, font_px = _legend_layout(width)
    picture = Image.new("RGB", (canvas_w, height + legend_h), (32, 32, 32))
    for start, rows in blended_bands(image, amap, vmin=legend.vmin, vmax=legend.vmax):
        picture.paste(Image.fromarray(rows), (0, start))
    strip = Image.new("RGB", (canvas_w, legend_h), (32, 32, 32))
    _draw_legend(strip, font_px, legend)
    picture.paste(strip, (0, height))
    return picture
