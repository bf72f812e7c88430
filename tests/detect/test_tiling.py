"""Tile grid, cut and stitch: properties on random sizes, and the tiling rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from feddymem.detect.tiling import (
    TileGrid,
    TilePlan,
    blend_window,
    border_rule,
    choose_tiling,
    cut_tiles,
    edge_peaks,
    plan_from_state,
    stitch,
    tile_grid,
    tile_starts,
)

SIZES = [(256, 256), (512, 1248), (288, 640), (1024, 320), (320, 320)]


@pytest.mark.parametrize("length", [64, 96, 256, 288, 1248])
@pytest.mark.parametrize("overlap", [0, 16, 32, 48])
def test_tile_starts_cover_and_overlap(length: int, overlap: int) -> None:
    tile = 64
    starts = tile_starts(length, tile=tile, overlap=overlap, multiple=16)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert bool(covered.all())
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(s % 16 == 0 for s in starts)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0 < g <= tile - overlap for g in gaps)


def test_tile_starts_refuse_bad_sizes() -> None:
    with pytest.raises(ValueError, match="shorter"):
        tile_starts(32, tile=64, overlap=0)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(128, tile=64, overlap=64)
    with pytest.raises(ValueError, match="multiples"):
        tile_starts(130, tile=64, overlap=0, multiple=8)


@pytest.mark.parametrize("hw", SIZES)
def test_cut_tiles_are_the_image_crops(hw: tuple[int, int]) -> None:
    grid = tile_grid(hw, tile=128 if min(hw) >= 128 else min(hw), overlap=32, multiple=8)
    images = torch.rand(2, 3, *hw)
    tiles = cut_tiles(images, grid)
    t = grid.tile
    assert tiles.shape == (2 * grid.n_tiles, 3, t, t)
    k = grid.n_tiles + len(grid.xs) + 1  # image 1, second row, second column (or wrapped)
    i, j = divmod(k - grid.n_tiles, len(grid.xs))
    y, x = grid.ys[i], grid.xs[j]
    assert torch.equal(tiles[k], images[1, :, y : y + t, x : x + t])


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("ramp", [0, 2, 4])
def test_stitch_of_constant_maps_is_constant(hw: tuple[int, int], ramp: int) -> None:
    stride = 8
    grid = tile_grid(hw, tile=128 if min(hw) >= 128 else min(hw), overlap=48, multiple=stride)
    cell = grid.tile // stride
    values = torch.tensor([3.5, -1.25])
    per_tile = values.repeat_interleave(grid.n_tiles).view(-1, 1, 1).expand(-1, cell, cell)
    out = stitch(per_tile.contiguous(), grid, stride=stride, window=blend_window(cell, ramp=ramp))
    assert out.shape == (2, hw[0] // stride, hw[1] // stride)
    assert torch.allclose(out[0], torch.full_like(out[0], 3.5))
    assert torch.allclose(out[1], torch.full_like(out[1], -1.25))


@pytest.mark.parametrize("hw", SIZES)
def test_stitch_inverts_cut_of_a_grid(hw: tuple[int, int]) -> None:
    """Cutting a score grid into the tiles' cells and stitching them gives the grid back."""
    stride = 8
    grid = tile_grid(hw, tile=128 if min(hw) >= 128 else min(hw), overlap=64, multiple=stride)
    cells = torch.rand(3, 1, hw[0] // stride, hw[1] // stride)
    cell_grid = TileGrid(
        image_hw=(hw[0] // stride, hw[1] // stride),
        tile=grid.tile // stride,
        ys=tuple(y // stride for y in grid.ys),
        xs=tuple(x // stride for x in grid.xs),
    )
    per_tile = cut_tiles(cells, cell_grid)[:, 0]
    window = blend_window(grid.tile // stride, ramp=3)
    assert torch.allclose(stitch(per_tile, grid, stride=stride, window=window), cells[:, 0])
    # grids of several channels (features) stitch channel by channel, in one call
    channels = torch.rand(3, 5, hw[0] // stride, hw[1] // stride)
    per_tile = cut_tiles(channels, cell_grid)
    assert torch.allclose(stitch(per_tile, grid, stride=stride, window=window), channels)


def test_blend_window_positive_and_flat_inside() -> None:
    w = blend_window(16, ramp=4)
    assert w.shape == (16, 16) and bool((w > 0).all())
    assert torch.all(w[4:12, 4:12] == 1.0)
    assert w[0, 0] < w[2, 2] < w[4, 4]


def test_rule_tiles_only_when_resizing_shrinks_much() -> None:
    # 500 x 1250 (KolektorSDD) to a 256 short side: shrink 1.95 > 1.5 -> tiled at native size
    plan = choose_tiling((500, 1250), mode="auto", image_size=256, coarse_stride=16)
    assert plan is not None
    assert plan.image_hw == (512, 1248) and plan.tile == 256 and plan.overlap == 64
    # 300 x 300 (ELPV): shrink 1.17 -> resized
    assert choose_tiling((300, 300), mode="auto", image_size=256, coarse_stride=16) is None
    assert choose_tiling((300, 300), mode="on", image_size=256, coarse_stride=16) is not None
    assert choose_tiling((5000, 5000), mode="off", image_size=256, coarse_stride=16) is None


def test_rule_bounds_the_working_image() -> None:
    plan = choose_tiling(
        (20000, 30000), mode="auto", image_size=256, coarse_stride=16, max_pixels=8 * 2**20
    )
    assert plan is not None
    assert plan.image_hw[0] * plan.image_hw[1] <= 8 * 2**20
    assert plan.image_hw[0] % 32 == 0 and plan.image_hw[1] % 32 == 0
    ratio = plan.image_hw[1] / plan.image_hw[0]
    assert abs(ratio - 1.5) < 0.05
    half = choose_tiling((1000, 2000), mode="on", image_size=256, coarse_stride=16, scale=0.5)
    assert half is not None and half.image_hw == (512, 992)


def test_padded_plan_mirrors_the_image_and_crops_the_grid() -> None:
    """A pad mirrors the image outwards before the cut; the stitched grid is the image's."""
    plan = TilePlan(image_hw=(96, 160), tile=64, overlap=16, pad=16)
    stride = 8
    assert plan.padded_hw == (128, 192)
    images = torch.rand(2, 3, 96, 160)
    tiles = plan.cut(images, stride)
    assert tiles.shape == (2 * plan.grid(stride).n_tiles, 3, 64, 64)
    first = tiles[0]  # the top-left tile: image from (0, 0) at (16, 16), mirrored above/left
    assert torch.equal(first[:, 16:, 16:], images[0, :, :48, :48])
    assert torch.equal(first[:, 15, 16:], images[0, :, 1, :48])  # reflect: row -1 is row 1
    assert torch.equal(first[:, 16:, 15], images[0, :, :48, 1])
    per_tile = torch.full((tiles.shape[0], 8, 8), 2.5)
    out = plan.stitch(per_tile, stride)
    assert out.shape == (2, 12, 20) and torch.allclose(out, torch.full_like(out, 2.5))


def test_rule_pads_by_the_overlap() -> None:
    plan = choose_tiling((500, 1250), mode="auto", image_size=256, coarse_stride=16)
    assert plan is not None and plan.pad == 64 and plan.padded_hw == (640, 1376)
    assert plan.grid(8).n_tiles == 21  # the same number of tiles as without the pad
    small = choose_tiling((320, 320), mode="on", image_size=64, coarse_stride=16, overlap=16)
    assert small is not None and small.pad == 0  # under 32 px: no pad
    none = choose_tiling((500, 1250), mode="auto", image_size=256, coarse_stride=16, pad=0)
    assert none is not None and none.pad == 0 and none.grid(8).n_tiles == 21
    with pytest.raises(ValueError, match="pad"):
        choose_tiling((500, 1250), mode="auto", image_size=256, coarse_stride=16, pad=48)


def test_plan_from_state_reads_old_and_new_entries() -> None:
    old = plan_from_state([256, 64], image_hw=(512, 1248), stride=8)
    assert old is not None and old.pad == 0
    new = plan_from_state([256, 64, 64], image_hw=(512, 1248), stride=8)
    assert new is not None and new.pad == 64
    for bad in ([256, 64, 4], [256, 64, 512], [256, 64, -32], [256, 64, 64, 0]):
        with pytest.raises(ValueError):
            plan_from_state(bad, image_hw=(512, 1248), stride=8)


def _maps_peaking(n: int, hw: tuple[int, int], *, at_edge: int, seed: int = 0) -> np.ndarray:
    """n noise maps; the first `at_edge` have their maximum on the edge, the rest inside."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, *hw))
    h, w = hw
    for i in range(n):
        y, x = (0, int(rng.integers(w))) if i < at_edge else (h // 2, w // 2)
        maps[i, y, x] = 2.0
    return maps


def test_edge_peaks_counts_maxima_in_the_band() -> None:
    k, n, area = edge_peaks(_maps_peaking(20, (40, 40), at_edge=7), band=4)
    assert (k, n) == (7, 20)
    assert area == pytest.approx(1 - 32 * 32 / 1600)


def test_border_rule_decides_from_where_normals_peak() -> None:
    hw = (64, 64)  # a band of 4 px is 23% of the area
    assert border_rule(_maps_peaking(30, hw, at_edge=25), band=4)
    assert not border_rule(_maps_peaking(30, hw, at_edge=7), band=4)  # about the area share
    assert not border_rule(_maps_peaking(30, hw, at_edge=0), band=4)
    # uniform noise: maxima anywhere, the band holds its share by chance
    rng = np.random.default_rng(1)
    assert not border_rule(rng.random((40, *hw)), band=4)
    assert not border_rule(_maps_peaking(30, hw, at_edge=30), band=0)  # no band
    assert not border_rule(_maps_peaking(30, hw, at_edge=30), band=32)  # no interior left
