"""Tiled scoring: cut large images into overlapping tiles, stitch per-tile patch scores back.

Resizing a 500 x 1250 scan to a 256-pixel short side halves every defect before the backbone
sees it. Tiling keeps the image at its native (or a chosen) resolution instead: the image is cut
into overlapping square tiles of the model's input size, each tile goes through the backbone and
the memory as an image of its own, and the tiles' patch scores are blended back into one grid
per image (a weighted mean where tiles overlap, each tile's border down-weighted because its
features there see the tile's zero padding rather than the image).

Pure functions on tensors: the tile grid (:func:`tile_grid`), cutting (:func:`cut_tiles`),
stitching (:func:`stitch`) and the rule that decides whether to tile (:func:`choose_tiling`).
Tile offsets are multiples of the feature stride, so tile grids land exactly on the image's
feature grid and stitching is a scatter-add with a weight map (no interpolation, no loop over
patches).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy.stats import binomtest

log = logging.getLogger(__name__)

__all__ = [
    "SHRINK_LIMIT",
    "TileGrid",
    "TilePlan",
    "blend_window",
    "border_rule",
    "choose_tiling",
    "cut_tiles",
    "edge_peaks",
    "plan_from_state",
    "plan_tiling",
    "stitch",
    "tile_grid",
    "tile_starts",
]

# Tile when resizing to the model's input size would shrink the short side by more than this
# factor (more than half the pixels lost: 1.5 ** 2 = 2.25); see choose_tiling.
SHRINK_LIMIT = 1.5
# Both sides of a tiled working image are multiples of this (the backbones' largest stride).
SIDE_MULTIPLE = 32
# The border rule's test level: the image score leaves the edge band out when held-out
# normals' maps peak in it more often than its area share, at this one-sided binomial p-value.
BORDER_P = 0.01


@dataclass(frozen=True)
class TilePlan:
    """How a tiled detector sees its images: each image is loaded at `image_hw` (H, W),
    mirrored outwards by `pad` pixels on every side, and cut into `tile` x `tile` tiles that
    overlap by at least `overlap` pixels; the stitched grid is cropped back to the image."""

    image_hw: tuple[int, int]
    tile: int
    overlap: int
    pad: int = 0

    @property
    def padded_hw(self) -> tuple[int, int]:
        return (self.image_hw[0] + 2 * self.pad, self.image_hw[1] + 2 * self.pad)

    def grid(self, stride: int) -> TileGrid:
        """The tile grid of a padded `image_hw` image for features of `stride` pixels."""
        if self.pad % stride:
            raise ValueError(f"tile pad {self.pad} px is not a multiple of stride {stride}")
        return tile_grid(self.padded_hw, tile=self.tile, overlap=self.overlap, multiple=stride)

    def cut(self, images: torch.Tensor, stride: int) -> torch.Tensor:
        """(B, C, H, W) images at `image_hw` -> their tiles (see :func:`cut_tiles`), the images
        mirrored (reflect padding) by `pad` pixels first."""
        grid = self.grid(stride)
        if self.pad:
            images = torch.nn.functional.pad(images, (self.pad,) * 4, mode="reflect")
        return cut_tiles(images, grid)

    def stitch(self, tile_scores: torch.Tensor, stride: int) -> torch.Tensor:
        """Per-tile grids (B * n_tiles, [C,] h, w) -> (B, [C,] H / stride, W / stride):
        stitched (:func:`stitch`, each tile's border cells down-weighted) and cropped to the
        image without its pad."""
        window = blend_window(self.tile // stride, ramp=self.overlap // stride)
        grids = stitch(tile_scores, self.grid(stride), stride=stride, window=window)
        p = self.pad // stride
        return grids[..., p : grids.shape[-2] - p, p : grids.shape[-1] - p] if p else grids


@dataclass(frozen=True)
class TileGrid:
    """Top-left corners of the tiles of an `image_hw` image: rows `ys` x columns `xs`, each
    tile `tile` pixels square; tiles are laid out row-major (ys outer, xs inner)."""

    image_hw: tuple[int, int]
    tile: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


def tile_starts(length: int, *, tile: int, overlap: int, multiple: int = 1) -> tuple[int, ...]:
    """Starts of tiles of `tile` pixels covering [0, length): a step of `tile - overlap` rounded
    down to a multiple of `multiple`, the last tile flush with the end (so neighbours overlap
    by `overlap` pixels at least). `length` and `tile` must be multiples of `multiple`."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got {tile}, {overlap}")
    if length < tile:
        raise ValueError(f"a side of {length} px is shorter than the tile ({tile} px)")
    if length % multiple or tile % multiple:
        raise ValueError(f"side {length} and tile {tile} must be multiples of {multiple}")
    step = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return tuple(starts)


def tile_grid(image_hw: tuple[int, int], *, tile: int, overlap: int, multiple: int = 1) -> TileGrid:
    """The tiles covering an `image_hw` image (see :func:`tile_starts`)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    return TileGrid(
        image_hw=(h, w),
        tile=tile,
        ys=tile_starts(h, tile=tile, overlap=overlap, multiple=multiple),
        xs=tile_starts(w, tile=tile, overlap=overlap, multiple=multiple),
    )


def _spans(starts: Sequence[int], size: int) -> torch.Tensor:
    """(n, size) indices start + [0, size) of each start."""
    return torch.tensor(starts).view(-1, 1) + torch.arange(size).view(1, -1)


def cut_tiles(images: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """(B, C, H, W) images -> (B * n_tiles, C, tile, tile): image b's tiles are rows
    b * n_tiles ... (b + 1) * n_tiles - 1, in the grid's row-major order."""
    b, c, h, w = images.shape
    if (h, w) != grid.image_hw:
        raise ValueError(f"images are {(h, w)} px, the tile grid is for {grid.image_hw}")
    t = grid.tile
    rows = _spans(grid.ys, t).view(len(grid.ys), 1, t, 1)
    cols = _spans(grid.xs, t).view(1, len(grid.xs), 1, t)
    tiles = images[:, :, rows, cols]  # (B, C, ny, nx, t, t), one gather
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * grid.n_tiles, c, t, t)


def blend_window(size: int, *, ramp: int) -> torch.Tensor:
    """(size, size) blending weights of a tile's cells: 1 inside, falling linearly over the
    `ramp` cells next to each border to 1 / (ramp + 1) at the border (never 0, so a cell that
    only one tile covers keeps its value)."""
    i = torch.arange(size, dtype=torch.float32)
    edge = torch.minimum(i + 1, size - i)
    w1 = (edge / (ramp + 1)).clamp(max=1.0) if ramp > 0 else torch.ones(size)
    return w1.view(-1, 1) * w1.view(1, -1)


def stitch(
    tile_scores: torch.Tensor, grid: TileGrid, *, stride: int, window: torch.Tensor | None = None
) -> torch.Tensor:
    """(B * n_tiles, [C,] h, w) per-tile grids (scores, or features of C channels) ->
    (B, [C,] H / stride, W / stride) image grids.

    Each tile's grid is placed at its offset / stride; where tiles overlap, the result is the
    mean of their values weighted by `window` (h, w) (uniform when None). One scatter-add of
    the weighted values and one of the weights; no loop over tiles, channels or cells.
    """
    if tile_scores.ndim == 4:  # channels: stitched as one scatter-add over (B, C)
        n, c, h, w = tile_scores.shape
        if n % grid.n_tiles:
            raise ValueError(f"{n} tile grids is not a whole number of images of {grid.n_tiles}")
        per_channel = tile_scores.view(n // grid.n_tiles, grid.n_tiles, c, h, w).transpose(1, 2)
        flat = per_channel.reshape(-1, h, w)  # (B * C * n_tiles, h, w), tiles innermost
        stitched = stitch(flat, grid, stride=stride, window=window)
        return stitched.view(n // grid.n_tiles, c, *stitched.shape[1:])
    n, h, w = tile_scores.shape
    if grid.tile % stride or any(v % stride for v in grid.ys + grid.xs):
        raise ValueError(f"tile {grid.tile} and its offsets must be multiples of stride {stride}")
    if (h, w) != (grid.tile // stride, grid.tile // stride):
        raise ValueError(f"tile grids are {(h, w)}, expected {grid.tile // stride} square")
    if n % grid.n_tiles:
        raise ValueError(f"{n} tile grids is not a whole number of images of {grid.n_tiles}")
    b = n // grid.n_tiles
    gh, gw = grid.image_hw[0] // stride, grid.image_hw[1] // stride
    rows = _spans([y // stride for y in grid.ys], h).view(len(grid.ys), 1, h, 1)
    cols = _spans([x // stride for x in grid.xs], w).view(1, len(grid.xs), 1, w)
    index = (rows * gw + cols).reshape(-1)  # (n_tiles * h * w,) flat cells, tile-major
    if window is None:
        window = torch.ones(h, w)
    weights = window.to(tile_scores).expand(grid.n_tiles, h, w).reshape(-1)
    total = torch.zeros(gh * gw, dtype=tile_scores.dtype).index_add_(0, index, weights)
    values = (tile_scores.reshape(b, -1) * weights).to(tile_scores.dtype)
    summed = torch.zeros(b, gh * gw, dtype=tile_scores.dtype).index_add_(1, index, values)
    return (summed / total).view(b, gh, gw)


def _round_side(side: float, *, tile: int) -> int:
    """A side rounded to a multiple of SIDE_MULTIPLE, at least one tile."""
    return max(tile, round(side / SIDE_MULTIPLE) * SIDE_MULTIPLE)


def choose_tiling(
    native_hw: tuple[int, int],
    *,
    mode: str,
    image_size: int,
    coarse_stride: int,
    scale: float = 1.0,
    overlap: int | None = None,
    pad: int | None = None,
    max_pixels: int = 32 * 2**20,
    shrink_limit: float = SHRINK_LIMIT,
) -> TilePlan | None:
    """The tiling rule: whether (and how) to tile images of typical size `native_hw`.

    Only image metadata goes in (the median size of the normal training images), never a
    defect. `mode` "off": never (None); "on": always; "auto": tile when resizing the short side
    to `image_size` would shrink it by more than `shrink_limit`. A tiled image is loaded at
    `native_hw` x `scale` (both sides rounded to multiples of 32, at least one tile; shrunk
    further if it would exceed `max_pixels`, so memory stays bounded whatever the file size);
    the tile is the model's input size `image_size`, so a tile's features cover as many pixels
    as a resized image's; the overlap (default) is four cells of the coarsest tap, `4 *
    coarse_stride`: the 3x3 aggregation of that tap reaches one cell past a tile's border and
    the tap's own padding about one more, on either side of a seam, so features within two
    coarse cells of a border are not those of the image and are down-weighted where a
    neighbouring tile sees the same place from inside. The image's own edge has no such
    neighbour, so the image is mirrored outwards by `pad` pixels (default: the overlap,
    rounded down to a multiple of 32): its edge cells are then seen from inside a tile, as
    every seam is, instead of next to the network's zero padding.
    """
    if mode not in ("off", "on", "auto"):
        raise ValueError(f"tile mode must be 'off', 'on' or 'auto', got {mode!r}")
    h, w = int(native_hw[0]), int(native_hw[1])
    if mode == "off" or (mode == "auto" and min(h, w) / image_size <= shrink_limit):
        return None
    tile = image_size
    sh, sw = h * scale, w * scale
    if sh * sw > max_pixels:
        shrink = math.sqrt(max_pixels / (sh * sw))
        sh, sw = sh * shrink, sw * shrink
    hw = (_round_side(sh, tile=tile), _round_side(sw, tile=tile))
    while hw[0] * hw[1] > max_pixels and max(hw) > tile:
        hw = (max(tile, hw[0] - SIDE_MULTIPLE), max(tile, hw[1] - SIDE_MULTIPLE))
    ov = 4 * coarse_stride if overlap is None else overlap
    ov = min(ov, tile // 2)
    pd = ov // SIDE_MULTIPLE * SIDE_MULTIPLE if pad is None else pad
    if pd < 0 or pd % SIDE_MULTIPLE or pd >= min(hw):
        raise ValueError(
            f"tile pad must be a multiple of {SIDE_MULTIPLE} px below the image side, got {pd}"
        )
    return TilePlan(image_hw=hw, tile=tile, overlap=ov, pad=pd)


def plan_from_state(value: object, *, image_hw: Sequence[int], stride: int) -> TilePlan | None:
    """The tile plan saved in a model file as ``[tile, overlap, pad]`` next to `image_hw`
    (``[tile, overlap]``: written before the pad, no pad; None: not tiled); a `ValueError`
    when it is malformed or does not fit the feature `stride`."""
    if value is None:
        return None
    if not (
        isinstance(value, list | tuple)
        and len(value) in (2, 3)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected [tile, overlap, pad], got {value!r}")
    hw = (int(image_hw[0]), int(image_hw[1]))
    pad = value[2] if len(value) == 3 else 0
    if not 0 <= pad < min(hw):
        raise ValueError(f"tile pad {pad} px does not fit an image of {hw}")
    plan = TilePlan(image_hw=hw, tile=value[0], overlap=value[1], pad=pad)
    plan.grid(stride)  # raises when the tiles do not fit the image or the stride
    return plan


def edge_peaks(maps: np.ndarray, band: int) -> tuple[int, int, float]:
    """(N, H, W) maps -> (how many maps have their maximum within `band` px of the edge, N,
    the share of the image area in that band)."""
    n, h, w = maps.shape
    inner = np.zeros((h, w), dtype=bool)
    inner[band : h - band, band : w - band] = True
    peak = maps.reshape(n, -1).argmax(axis=1)
    return int((~inner.reshape(-1)[peak]).sum()), n, float((~inner).mean())


def border_rule(maps: np.ndarray, *, band: int, level: float = BORDER_P) -> bool:
    """True when the image score should leave out the `band`-px edge band: the maps of
    held-out *normal* images (N, H, W) peak in that band more often than its share of the area,
    by a one-sided binomial test at `level`. A normal's maximum falls anywhere when the edge
    is scored as the interior is; if it keeps falling at the edge, the edge carries no
    evidence of a defect, only the tiles' and the image's borders. No defect is looked at."""
    if band <= 0 or len(maps) == 0 or 2 * band >= min(maps.shape[1:]):
        return False
    k, n, area = edge_peaks(maps, band)
    p = binomtest(k, n, area, alternative="greater").pvalue
    log.info(
        "border rule: %d of %d held-out normals peak within %d px of the edge (%.0f%% of the "
        "area), p = %.2g: the image score %s the band",
        k,
        n,
        band,
        100 * area,
        p,
        "leaves out" if p < level else "keeps",
    )
    return bool(p < level)


class TilingOptions(Protocol):
    """The configuration fields the rule reads (`feddymem.config.FeatureConfig`'s)."""

    @property
    def tile(self) -> str: ...
    @property
    def image_size(self) -> int: ...
    @property
    def tile_scale(self) -> float: ...
    @property
    def tile_overlap(self) -> int | None: ...
    @property
    def tile_pad(self) -> int | None: ...
    @property
    def tile_max_megapixels(self) -> float: ...


def plan_tiling(
    native_hw: tuple[int, int], options: TilingOptions, *, coarse_stride: int
) -> TilePlan | None:
    """:func:`choose_tiling` with a configuration's options, the decision logged."""
    plan = choose_tiling(
        native_hw,
        mode=options.tile,
        image_size=options.image_size,
        coarse_stride=coarse_stride,
        scale=options.tile_scale,
        overlap=options.tile_overlap,
        pad=options.tile_pad,
        max_pixels=int(options.tile_max_megapixels * 2**20),
    )
    log.info(
        "images of median size %s: %s",
        native_hw,
        "resized"
        if plan is None
        else f"tiled at {plan.image_hw} (mirrored by {plan.pad} px), tiles of {plan.tile} px "
        f"overlapping by {plan.overlap} px",
    )
    return plan
