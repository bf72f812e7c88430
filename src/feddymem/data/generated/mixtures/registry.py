"""The registered mixtures (:data:`MIXTURES`) and how each opens its sources."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import BuildContext, ClientRecipe, MixtureRecipe
from feddymem.data.generated.mixtures.sources import (
    FileSource,
    ProductSource,
    Source,
    SynthOnFilesSource,
    TextureSource,
)
from feddymem.data.generated.products.factories import FACTORIES
from feddymem.data.generated.synth.kinds import DEFAULT_KINDS as SYNTH_KINDS

SHARED_DATA_ENV = "FEDDYMEM_SHARED_DATA"
"""Environment variable naming the folder of the shared real data sets."""

_MAX_SIDE = 256
_KOLEKTOR_MAX_SIDE = 640
_ELPV_EXPORT_SEED = 0  # the cached ELPV exports are fixed; the mixture seed deals from them
_ELPV_TEST_FRACTION = 0.3


def default_shared_data() -> Path:
    """The shared real data sets: ``$FEDDYMEM_SHARED_DATA``, else ``../shared/data``."""
    return Path(os.environ.get(SHARED_DATA_ENV, "../shared/data"))


def _shared_set(ctx: BuildContext, name: str) -> Path:
    """``<shared_data>/<name>``, or a MixtureError saying what was tried and how to fix it."""
    base = ctx.shared_data if ctx.shared_data is not None else default_shared_data()
    how = (
        f"pass shared_data=... (CLI: --shared-data DIR) or set {SHARED_DATA_ENV} to the folder "
        f"holding magnetic_tile/ and kolektorsdd/ (default ../shared/data)"
    )
    if not base.is_dir():
        raise MixtureError(
            f"mixture {ctx.mixture!r} needs the shared real data sets; tried "
            f"{base.absolute()}: folder not found; {how}"
        )
    root = base / name
    if not (root / "train" / "good").is_dir():
        raise MixtureError(
            f"mixture {ctx.mixture!r} needs {name} in MVTec layout; tried {root.absolute()}: "
            f"no train/good folder there; {how}"
        )
    return root


def _elpv_root(ctx: BuildContext, cell_type: Literal["mono", "poly"]) -> Path:
    """An ELPV export of ``cell_type`` in the cache (exported once, then reused)."""
    from feddymem.data.elpv import export_elpv

    summary = export_elpv(
        ctx.elpv_cache / f"elpv-{cell_type}",
        cell_type=cell_type,
        seed=_ELPV_EXPORT_SEED,
        test_fraction=_ELPV_TEST_FRACTION,
    )
    return summary.out


def _open_elpv(ctx: BuildContext, make: Callable[[str, Path], Source]) -> dict[str, Source]:
    """Sources ``elpv-mono`` and ``elpv-poly``: ``make(name, root)`` on each cell type's export."""
    return {f"elpv-{t}": make(f"elpv-{t}", _elpv_root(ctx, t)) for t in ("mono", "poly")}


def _open_elpv_cells(ctx: BuildContext) -> dict[str, Source]:
    return _open_elpv(
        ctx, lambda name, root: FileSource(name, root, max_side=_MAX_SIDE, need_masks=False)
    )


def _open_elpv_synth(ctx: BuildContext) -> dict[str, Source]:
    return _open_elpv(
        ctx,
        lambda name, root: SynthOnFilesSource(name, root, max_side=_MAX_SIDE, kinds=SYNTH_KINDS),
    )


def _open_surface(ctx: BuildContext) -> dict[str, Source]:
    sides = {"magnetic_tile": _MAX_SIDE, "kolektorsdd": _KOLEKTOR_MAX_SIDE}
    return {
        name: FileSource(name, _shared_set(ctx, name), max_side=side, need_masks=True)
        for name, side in sides.items()
    }


def _open_textures(ctx: BuildContext) -> dict[str, Source]:
    return {name: TextureSource(name, kinds=SYNTH_KINDS) for name in ("brick", "grass", "gravel")}


def _open_products(ctx: BuildContext) -> dict[str, Source]:
    return {name: ProductSource(name) for name in FACTORIES}


def _clients(*shares: Mapping[str, float]) -> tuple[ClientRecipe, ...]:
    return tuple(
        ClientRecipe(name=f"client-{i}", shares=tuple(share.items()))
        for i, share in enumerate(shares)
    )


_TWO_SOURCE_SHARES = ((0.8, 0.2), (0.5, 0.5), (0.2, 0.8))


def _two_source_clients(a: str, b: str) -> tuple[ClientRecipe, ...]:
    return _clients(*({a: x, b: y} for x, y in _TWO_SOURCE_SHARES))


MIXTURES: dict[str, MixtureRecipe] = {
    recipe.name: recipe
    for recipe in (
        MixtureRecipe(
            name="elpv-cells",
            description="ELPV solar cells, mono and poly as two sources, 3 clients "
            "(80/20, 50/50, 20/80); real defects, image labels only",
            sources=("elpv-mono", "elpv-poly"),
            clients=_two_source_clients("elpv-mono", "elpv-poly"),
            needs_shared_data=False,
            pixel_masks=False,
            open_sources=_open_elpv_cells,
        ),
        MixtureRecipe(
            name="surface",
            description="surface inspection: magnetic tile and KolektorSDD (real defects, "
            "pixel masks) as two sources, 3 clients (80/20, 50/50, 20/80); needs shared data",
            sources=("magnetic_tile", "kolektorsdd"),
            clients=_two_source_clients("magnetic_tile", "kolektorsdd"),
            needs_shared_data=True,
            pixel_masks=True,
            open_sources=_open_surface,
        ),
        MixtureRecipe(
            name="textures",
            description="scikit-image brick, grass and gravel crops as three sources with "
            "synthetic anomalies and masks, 3 clients (60/20/20 rotated)",
            sources=("brick", "grass", "gravel"),
            clients=_clients(
                {"brick": 0.6, "grass": 0.2, "gravel": 0.2},
                {"brick": 0.2, "grass": 0.6, "gravel": 0.2},
                {"brick": 0.2, "grass": 0.2, "gravel": 0.6},
            ),
            needs_shared_data=False,
            pixel_masks=True,
            open_sources=_open_textures,
        ),
        MixtureRecipe(
            name="products",
            description="generated flange images from four factories (lighting, colour, pose "
            "shifts) with rendered scratch/dent/chunk/stain/missing-hole defects and masks, "
            "4 clients",
            sources=tuple(FACTORIES),
            clients=_clients(
                {"plant-a": 0.7, "plant-b": 0.3},
                {"plant-b": 0.6, "plant-c": 0.4},
                {"plant-c": 0.5, "plant-d": 0.5},
                {"plant-a": 0.25, "plant-b": 0.25, "plant-c": 0.25, "plant-d": 0.25},
            ),
            needs_shared_data=False,
            pixel_masks=True,
            open_sources=_open_products,
        ),
        MixtureRecipe(
            name="elpv-synth",
            description="ELPV good cells (mono, poly) with synthetic anomalies and masks, "
            "3 clients (80/20, 50/50, 20/80)",
            sources=("elpv-mono", "elpv-poly"),
            clients=_two_source_clients("elpv-mono", "elpv-poly"),
            needs_shared_data=False,
            pixel_masks=True,
            open_sources=_open_elpv_synth,
        ),
    )
}
"""The registered mixtures by name."""


def recipe_named(name: str) -> MixtureRecipe:
    try:
        return MIXTURES[name]
    except KeyError:
        raise MixtureError(
            f"unknown mixture {name!r}; known mixtures: {', '.join(sorted(MIXTURES))}"
        ) from None
