"""Multi-source mixture data sets for the comparison table, written as MVTec-layout folders.

A *mixture* is one product (or inspection) type drawn from several *sources* (data sets,
factories, textures) and dealt to several clients with different source shares, so clients
differ (non-IID) and each client's data is itself a mixture.  :data:`MIXTURES` names the
recipes; :func:`build_mixture` writes one::

    <out>/<name>/
        federation.toml              # [[clients]] with relative data paths (feddymem.federation.spec)
        mixture.json                 # recipe, seed, scale, counts per client / source / folder
        <client>/<source>/train/good/<source>_<stem>.png
        <client>/<source>/test/good/<source>_<stem>.png
        <client>/<source>/test/<defect>/<source>_<stem>.png
        <client>/<source>/ground_truth/<defect>/<source>_<stem>_mask.png

Every ``<client>/<source>`` folder is an MVTec-layout root, and the spec lists a client's
roots as its ``data``: :func:`feddymem.data.scan` names a root's samples after its folder, so
``Sample.source`` tells the sources of a client apart (and the file-name prefix keeps them
apart if the files are ever pooled).  Images are PNG (grey sources stay one-channel), resized so
the long side is at most 256 px (KolektorSDD: 640 px, keeping its 1:2.5 aspect); masks are
uint8 0 / 255 of the image's size.

Guarantees (tested): no image is used twice in a mixture; training images never come from
the source's test pool (real sets keep their own train / test split; generated sources draw
test crops or renders from separate regions or seeds); test normals are held out; every
anomalous image of a recipe with ``pixel_masks`` has a non-empty mask; the same name, scale and
seed write byte-identical files.  A build goes to a hidden ``.<name>.partial`` sibling and is
moved into place at the end; re-running into a complete build with the same settings is a
no-op, with other settings a clean rewrite; a folder this module did not write is never
touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from feddymem.data.generated.products import DEFECT_KINDS as PRODUCT_DEFECTS
from feddymem.data.generated.products import FACTORIES, render_product
from feddymem.data.generated.synth import DEFAULT_KINDS as SYNTH_KINDS
from feddymem.data.generated.synth import SynthesisError, insert_anomaly
from feddymem.data.images import DataError, read_image, read_image_size, read_mask
from feddymem.data.layouts import IMAGE_EXTENSIONS, scan_mvtec

__all__ = [
    "MIXTURES",
    "SCALES",
    "ClientRecipe",
    "MixtureError",
    "MixtureRecipe",
    "ScaleSizes",
    "build_mixture",
    "cmd_data_mixture",
    "default_shared_data",
    "register_cli",
]

logger = logging.getLogger(__name__)

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]

Scale = Literal["quick", "full"]
Role = Literal["train", "good", "anomalous"]
ROLES: tuple[Role, ...] = ("train", "good", "anomalous")

SUMMARY_NAME = "mixture.json"
SPEC_NAME = "federation.toml"
SHARED_DATA_ENV = "FEDDYMEM_SHARED_DATA"
"""Environment variable naming the folder of the shared real data sets."""

_FORMAT = "feddymem-mixture"
_VERSION = 1
_PARTIAL_MARKER = ".feddymem_mixture_partial"
_MAX_SIDE = 256
_KOLEKTOR_MAX_SIDE = 640
_TEXTURE_CROP = 128
_TEXTURE_TEST_ROWS = 160  # bottom rows of each 512 x 512 texture reserved for test crops
_PRODUCT_SIZE = 256
_ELPV_EXPORT_SEED = 0  # the cached ELPV exports are fixed; the mixture seed deals from them
_ELPV_TEST_FRACTION = 0.3


class MixtureError(DataError):
    """A mixture cannot be built: unknown name, missing inputs, pools too small, bad target."""


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSizes:
    """Images per client at one scale: training normals, held-out normals, anomalies."""

    train: int
    good: int
    anomalous: int

    def of(self, role: Role) -> int:
        """The count for ``role``."""
        return {"train": self.train, "good": self.good, "anomalous": self.anomalous}[role]


SCALES: dict[str, ScaleSizes] = {
    "quick": ScaleSizes(train=30, good=10, anomalous=10),
    "full": ScaleSizes(train=80, good=25, anomalous=25),
}
"""Per-client sizes: ``quick`` for smoke runs, ``full`` for the comparison table (2 CPU cores)."""


@dataclass(frozen=True)
class ClientRecipe:
    """One client: its name and the share of its images each source gives.

    Attributes:
        name: Client name (a folder name and the spec's ``[[clients]] name``).
        shares: ``(source, share)`` pairs; shares are positive and sum to 1.
    """

    name: str
    shares: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class MixtureRecipe:
    """A registered mixture.

    Attributes:
        name: Registry key, output folder name and federation name.
        description: One line for ``--list``.
        sources: Source names (folder names under each client).
        clients: The clients and their source shares.
        needs_shared_data: Reads the real sets under the shared-data folder.
        pixel_masks: Every anomalous image has a mask (else image labels only).
        open_sources: Makes the sources from a build context.
    """

    name: str
    description: str
    sources: tuple[str, ...]
    clients: tuple[ClientRecipe, ...]
    needs_shared_data: bool
    pixel_masks: bool
    open_sources: Callable[[_BuildContext], dict[str, _Source]]


@dataclass(frozen=True)
class _BuildContext:
    """What sources need to open: where the inputs are and where to cache exports."""

    mixture: str
    seed: int
    shared_data: Path | None
    elpv_cache: Path


@dataclass(frozen=True)
class _Item:
    """One image to write: pixels, defect (``"good"`` if normal), mask, file stem."""

    stem: str
    defect: str
    image: UInt8Array
    mask: BoolArray | None


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class _Source(ABC):
    """Where the images of one source come from.

    Images are dealt from *pools*: roles mapped to the same pool (``pool_of``) share one
    permutation, so they never reuse an image.  A pool of size None is generated on demand.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def pool_of(self, role: Role) -> str:
        """The pool ``role`` is dealt from."""

    @abstractmethod
    def pool_size(self, pool: str) -> int | None:
        """Items in ``pool``; None: unlimited (generated)."""

    @abstractmethod
    def item(self, role: Role, index: int, rng: np.random.Generator) -> _Item:
        """Item ``index`` of ``role``'s pool, with ``rng`` for anything random it needs."""


def _resize_long_side(image: UInt8Array, max_side: int) -> UInt8Array:
    """Shrink ``(H, W[, 3])`` so its long side is at most ``max_side`` (aspect kept)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    factor = max_side / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _resize_mask(mask: BoolArray, hw: tuple[int, int]) -> BoolArray:
    """Resize a mask to ``hw``: area-averaged, kept where at least half covered.

    Thin defects (cracks) can fall under half a pixel; then any covered pixel is kept, so a
    non-empty mask stays non-empty.
    """
    if mask.shape == hw:
        return mask
    box = np.asarray(
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).resize(
            (hw[1], hw[0]), Image.Resampling.BOX
        )
    )
    out = box >= 128
    if not out.any() and mask.any():
        out = box > 0
    return np.asarray(out)


def _gray_if_equal(image: UInt8Array) -> UInt8Array:
    """``(H, W)`` when the three channels are equal (smaller files), else unchanged."""
    if (
        image.ndim == 3
        and np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 0], image[..., 2])
    ):
        return np.ascontiguousarray(image[..., 0])
    return image


class _FileSource(_Source):
    """A real MVTec-layout set: ``train/good`` trains, ``test/good`` and defects test.

    Anomalies come as they are (real defects, masks resized with the image).  Anomalies
    without a usable mask are left out when ``need_masks``.
    """

    def __init__(self, name: str, root: Path, *, max_side: int, need_masks: bool) -> None:
        super().__init__(name)
        split = scan_mvtec(root)
        self.max_side = max_side
        self.train = [s.path for s in split.train]
        self.good = [s.path for s in split.test if s.label == 0]
        anomalous = [(s.path, s.defect, s.mask_path) for s in split.test if s.label == 1]
        if need_masks:
            usable = [
                a
                for a in anomalous
                if a[2] is not None
                and read_mask(a[2], expected_hw=read_image_size(a[0]), image_path=a[0]).any()
            ]
            if len(usable) < len(anomalous):
                logger.info(
                    "%s: %d of %d anomalous images have no mask or an empty one; left out",
                    name,
                    len(anomalous) - len(usable),
                    len(anomalous),
                )
            anomalous = usable
        self.anomalous = anomalous
        self.need_masks = need_masks

    def pool_of(self, role: Role) -> str:
        return role

    def pool_size(self, pool: str) -> int | None:
        if pool == "anomalous":
            return len(self.anomalous)
        return len(self.train if pool == "train" else self.good)

    def item(self, role: Role, index: int, rng: np.random.Generator) -> _Item:
        mask_path: Path | None = None
        defect = "good"
        if role == "anomalous":
            path, defect, mask_path = self.anomalous[index]
        else:
            path = (self.train if role == "train" else self.good)[index]
        full = _gray_if_equal(read_image(path))
        image = _resize_long_side(full, self.max_side)
        mask = None
        if mask_path is not None and self.need_masks:
            hw = (int(full.shape[0]), int(full.shape[1]))
            mask = read_mask(mask_path, expected_hw=hw, image_path=path)
            mask = _resize_mask(mask, (int(image.shape[0]), int(image.shape[1])))
        return _Item(stem=path.stem, defect=defect, image=image, mask=mask)


class _SynthOnFilesSource(_FileSource):
    """Real normals with synthetic anomalies (:mod:`feddymem.data.generated.synth`) and exact masks.

    Held-out normals and the bases of anomalies share the ``test/good`` pool, so an anomalous
    image is never a copy of a held-out or training one; real anomalies are not used.
    """

    def __init__(self, name: str, root: Path, *, max_side: int, kinds: Sequence[str]) -> None:
        super().__init__(name, root, max_side=max_side, need_masks=False)
        self.kinds = tuple(kinds)

    def pool_of(self, role: Role) -> str:
        return "train" if role == "train" else "good"

    def item(self, role: Role, index: int, rng: np.random.Generator) -> _Item:
        if role != "anomalous":
            return super().item(role, index, rng)
        normal = super().item("good", index, rng)
        return _with_synthetic_anomaly(normal, self.kinds[index % len(self.kinds)], rng)


def _with_synthetic_anomaly(normal: _Item, kind: str, rng: np.random.Generator) -> _Item:
    """Insert one synthetic anomaly of ``kind`` into a normal item (grey stays grey)."""
    rgb = normal.image if normal.image.ndim == 3 else np.repeat(normal.image[..., None], 3, -1)
    try:
        result = insert_anomaly(np.ascontiguousarray(rgb), kind, rng)
    except SynthesisError as err:
        raise MixtureError(f"{normal.stem}: {err}") from err
    return _Item(
        stem=normal.stem, defect=kind, image=_gray_if_equal(result.image), mask=result.mask
    )


class _TextureSource(_Source):
    """Crops of one scikit-image texture (512 x 512 grey) with synthetic anomalies.

    Training crops lie in the top rows, test crops (held-out normals and the bases of
    anomalies) in the bottom :data:`_TEXTURE_TEST_ROWS` rows, so no training pixel is ever seen
    at test time.  Each crop is flipped left-right at random.
    """

    def __init__(self, name: str, *, kinds: Sequence[str]) -> None:
        super().__init__(name)
        from skimage import data as skdata

        texture = np.asarray(getattr(skdata, name)())
        self.texture = texture if texture.ndim == 2 else texture[..., 0]
        self.kinds = tuple(kinds)

    def pool_of(self, role: Role) -> str:
        return "train" if role == "train" else "test"

    def pool_size(self, pool: str) -> int | None:
        return None

    def item(self, role: Role, index: int, rng: np.random.Generator) -> _Item:
        h, w = self.texture.shape
        split = h - _TEXTURE_TEST_ROWS
        top, bottom = (0, split) if role == "train" else (split, h)
        y = int(rng.integers(top, bottom - _TEXTURE_CROP + 1))
        x = int(rng.integers(0, w - _TEXTURE_CROP + 1))
        crop = self.texture[y : y + _TEXTURE_CROP, x : x + _TEXTURE_CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pool = self.pool_of(role)
        normal = _Item(
            stem=f"{pool}{index:05d}", defect="good", image=np.ascontiguousarray(crop), mask=None
        )
        if role != "anomalous":
            return normal
        return _with_synthetic_anomaly(normal, self.kinds[index % len(self.kinds)], rng)


class _ProductSource(_Source):
    """One factory of :mod:`feddymem.data.generated.products`; anomalies are rendered defects."""

    def pool_of(self, role: Role) -> str:
        return "train" if role == "train" else "test"

    def pool_size(self, pool: str) -> int | None:
        return None

    def item(self, role: Role, index: int, rng: np.random.Generator) -> _Item:
        defect = PRODUCT_DEFECTS[index % len(PRODUCT_DEFECTS)] if role == "anomalous" else None
        rendered = render_product(self.name, rng, defect=defect, size=_PRODUCT_SIZE)
        return _Item(
            stem=f"{self.pool_of(role)}{index:05d}",
            defect=rendered.defect,
            image=rendered.image,
            mask=rendered.mask,
        )


# --------------------------------------------------------------------------------------------
# Opening sources (per recipe)
# --------------------------------------------------------------------------------------------


def default_shared_data() -> Path:
    """The shared real data sets: ``$FEDDYMEM_SHARED_DATA``, else ``../shared/data``."""
    return Path(os.environ.get(SHARED_DATA_ENV, "../shared/data"))


def _shared_set(ctx: _BuildContext, name: str) -> Path:
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


def _elpv_root(ctx: _BuildContext, cell_type: Literal["mono", "poly"]) -> Path:
    """An ELPV export of ``cell_type`` in the cache (exported once, then reused)."""
    from feddymem.data.elpv import export_elpv

    summary = export_elpv(
        ctx.elpv_cache / f"elpv-{cell_type}",
        cell_type=cell_type,
        seed=_ELPV_EXPORT_SEED,
        test_fraction=_ELPV_TEST_FRACTION,
    )
    return summary.out


def _open_elpv_cells(ctx: _BuildContext) -> dict[str, _Source]:
    return {
        f"elpv-{t}": _FileSource(
            f"elpv-{t}", _elpv_root(ctx, t), max_side=_MAX_SIDE, need_masks=False
        )
        for t in ("mono", "poly")
    }


def _open_elpv_synth(ctx: _BuildContext) -> dict[str, _Source]:
    return {
        f"elpv-{t}": _SynthOnFilesSource(
            f"elpv-{t}", _elpv_root(ctx, t), max_side=_MAX_SIDE, kinds=SYNTH_KINDS
        )
        for t in ("mono", "poly")
    }


def _open_surface(ctx: _BuildContext) -> dict[str, _Source]:
    sides = {"magnetic_tile": _MAX_SIDE, "kolektorsdd": _KOLEKTOR_MAX_SIDE}
    return {
        name: _FileSource(name, _shared_set(ctx, name), max_side=side, need_masks=True)
        for name, side in sides.items()
    }


def _open_textures(ctx: _BuildContext) -> dict[str, _Source]:
    return {name: _TextureSource(name, kinds=SYNTH_KINDS) for name in ("brick", "grass", "gravel")}


def _open_products(ctx: _BuildContext) -> dict[str, _Source]:
    return {name: _ProductSource(name) for name in FACTORIES}


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


def _recipe(name: str) -> MixtureRecipe:
    try:
        return MIXTURES[name]
    except KeyError:
        raise MixtureError(
            f"unknown mixture {name!r}; known mixtures: {', '.join(sorted(MIXTURES))}"
        ) from None


# --------------------------------------------------------------------------------------------
# Planning: who gets which item
# --------------------------------------------------------------------------------------------


def _split_count(total: int, shares: Sequence[float]) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``shares`` (largest remainder),
    each at least 1 when ``total`` allows."""
    raw = np.asarray(shares, dtype=np.float64) * total / float(sum(shares))
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    for i in range(len(counts)):
        if counts[i] == 0 and total >= len(counts):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return [int(c) for c in counts]


@dataclass(frozen=True)
class _Assignment:
    """Items of one (client, source, role): positions in the pool's dealing order."""

    client: str
    source: str
    role: Role
    indices: tuple[int, ...]


def _stable_key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _plan(
    recipe: MixtureRecipe, sizes: ScaleSizes, sources: Mapping[str, _Source], seed: int
) -> list[_Assignment]:
    """Deal every pool's items to the clients, in order (role, client), without reuse."""
    wanted: dict[tuple[str, str, Role], int] = {}
    for client in recipe.clients:
        names = [s for s, _ in client.shares]
        for role in ROLES:
            split = _split_count(sizes.of(role), [x for _, x in client.shares])
            for source_name, n in zip(names, split, strict=True):
                wanted[(client.name, source_name, role)] = n

    assignments: list[_Assignment] = []
    for source_name in recipe.sources:
        source = sources[source_name]
        cursors: dict[str, int] = {}
        orders: dict[str, np.ndarray] = {}
        for role in ROLES:
            pool = source.pool_of(role)
            need = sum(
                wanted.get((c.name, source_name, r), 0)
                for c in recipe.clients
                for r in ROLES
                if source.pool_of(r) == pool
            )
            size = source.pool_size(pool)
            if pool not in orders:
                if size is None:
                    orders[pool] = np.arange(need)
                else:
                    if need > size:
                        raise MixtureError(
                            f"mixture {recipe.name!r}: source {source_name!r} pool {pool!r} "
                            f"holds {size} images, the clients need {need}"
                        )
                    rng = np.random.default_rng([seed, _stable_key(source_name), _stable_key(pool)])
                    orders[pool] = rng.permutation(size)
                cursors[pool] = 0
            for client in recipe.clients:
                n = wanted.get((client.name, source_name, role), 0)
                if n == 0:
                    continue
                start = cursors[pool]
                picked = tuple(int(i) for i in orders[pool][start : start + n])
                cursors[pool] = start + n
                assignments.append(_Assignment(client.name, source_name, role, picked))
    return assignments


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _write_item(root: Path, source: str, role: Role, item: _Item) -> str:
    """Write one item under the MVTec root ``root``; returns its folder key (``test/good``)."""
    stem = f"{source}_{item.stem}"
    if role == "train":
        folder = "train/good"
    elif item.defect == "good":
        folder = "test/good"
    else:
        folder = f"test/{item.defect}"
    _save_png(item.image, root / folder / f"{stem}.png")
    if item.mask is not None:
        if item.mask.shape != item.image.shape[:2] or not item.mask.any():
            raise MixtureError(f"{root / folder / stem}: mask empty or of the wrong size")
        mask = np.where(item.mask, 255, 0).astype(np.uint8)
        _save_png(mask, root / "ground_truth" / item.defect / f"{stem}_mask.png")
    return folder


def _spec_text(recipe: MixtureRecipe, seed: int, roots: Mapping[str, list[str]]) -> str:
    """The federation spec TOML (rounds and timeouts are defaults a harness overrides)."""
    lines = [
        f"# Mixture {recipe.name!r}: {recipe.description}.",
        "# Written by feddymem.data.generated.mixtures; data paths are relative to this file's folder.",
        "",
        "[federation]",
        f'name = "{recipe.name}"',
        "rounds = 3",
        f"min_clients = {len(recipe.clients)}",
        f"seed = {seed}",
    ]
    for client in recipe.clients:
        data = ", ".join(json.dumps(p) for p in roots[client.name])
        lines += ["", "[[clients]]", f'name = "{client.name}"', f"data = [{data}]"]
    return "\n".join(lines) + "\n"


def _count_files(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _settings(recipe: MixtureRecipe, scale: str, seed: int) -> dict[str, Any]:
    return {"name": recipe.name, "scale": scale, "seed": seed, "version": _VERSION}


def _read_summary(target: Path) -> dict[str, Any] | None:
    path = target / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MixtureError(f"{path}: unreadable mixture summary ({err})") from err
    if not isinstance(summary, dict) or summary.get("format") != _FORMAT:
        return None
    return summary


def _is_complete(target: Path, summary: Mapping[str, Any]) -> bool:
    """True when every file the summary counts is there (and no stray one)."""
    files = summary.get("files")
    return (
        isinstance(files, int) and _count_files(target) == files and (target / SPEC_NAME).is_file()
    )


def _check_target(target: Path, settings: Mapping[str, Any]) -> bool:
    """Decide what to do with ``target``: True when it already holds this build (no-op).

    Raises:
        MixtureError: ``target`` exists and was not written by this module.
    """
    if not target.exists():
        return False
    if not target.is_dir():
        raise MixtureError(f"{target}: exists and is not a folder")
    if not any(target.iterdir()):
        return False
    summary = _read_summary(target)
    if summary is None:
        raise MixtureError(
            f"{target}: folder is not empty and holds no {SUMMARY_NAME} of a feddymem mixture; "
            "refusing to write into it (choose another --out)"
        )
    if summary.get("settings") == dict(settings) and _is_complete(target, summary):
        return True
    logger.info("%s: holds another or an incomplete build; it will be replaced", target)
    return False


def build_mixture(
    name: str,
    out: Path,
    *,
    scale: Scale = "quick",
    seed: int = 0,
    shared_data: Path | None = None,
    elpv_cache: Path | None = None,
) -> Path:
    """Write mixture ``name`` to ``<out>/<name>`` (layout in the module docstring).

    Args:
        name: A key of :data:`MIXTURES`.
        out: Parent folder of the mixture folder.
        scale: ``"quick"`` or ``"full"``, per-client sizes from :data:`SCALES`.
        seed: Seed of the dealing and of every generated image or synthetic anomaly.
        shared_data: Folder holding ``magnetic_tile/`` and ``kolektorsdd/`` (``surface``);
            default :func:`default_shared_data`.
        elpv_cache: Folder for the ELPV exports the ELPV recipes read (``elpv-mono``,
            ``elpv-poly``, made once with seed 0 and reused); default ``<out>/_sources``.

    Returns:
        Path of the written ``federation.toml``.

    Raises:
        MixtureError: unknown name or scale, a negative seed, missing shared data, a pool too
            small for the scale, or a target folder this module did not write.
    """
    recipe = _recipe(name)
    if scale not in SCALES:
        raise MixtureError(f"unknown scale {scale!r}; known scales: {', '.join(SCALES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MixtureError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = SCALES[scale]
    base = Path(out).absolute()
    target = base / recipe.name
    spec_path = target / SPEC_NAME
    settings = _settings(recipe, scale, seed)
    if _check_target(target, settings):
        logger.info("%s: complete mixture with the same settings found; reusing it", target)
        return spec_path

    started = time.perf_counter()
    ctx = _BuildContext(
        mixture=recipe.name,
        seed=seed,
        shared_data=shared_data,
        elpv_cache=Path(elpv_cache) if elpv_cache is not None else base / "_sources",
    )
    sources = recipe.open_sources(ctx)
    plan = _plan(recipe, sizes, sources, seed)

    partial = base / f".{recipe.name}.partial"
    if partial.exists():
        if not (partial / _PARTIAL_MARKER).is_file():
            raise MixtureError(f"{partial}: exists and is not an unfinished mixture; remove it")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / _PARTIAL_MARKER).touch()

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for job in plan:
        source = sources[job.source]
        pool = source.pool_of(job.role)
        root = partial / job.client / job.source
        bucket = counts.setdefault(job.client, {}).setdefault(job.source, {})
        for index in job.indices:
            seq = np.random.SeedSequence(
                [seed, _stable_key(recipe.name), _stable_key(job.source), _stable_key(pool), index]
            )
            item = source.item(job.role, index, np.random.default_rng(seq))
            if recipe.pixel_masks and job.role == "anomalous" and item.mask is None:
                raise MixtureError(f"{job.source} {item.stem}: anomalous image without a mask")
            folder = _write_item(root, job.source, job.role, item)
            bucket[folder] = bucket.get(folder, 0) + 1

    roots = {
        c.name: [f"{c.name}/{s}" for s in recipe.sources if s in counts.get(c.name, {})]
        for c in recipe.clients
    }
    (partial / SPEC_NAME).write_text(_spec_text(recipe, seed, roots), encoding="utf-8")
    n_files = _count_files(partial)
    summary = {
        "format": _FORMAT,
        "settings": settings,
        "description": recipe.description,
        "pixel_masks": recipe.pixel_masks,
        "sizes_per_client": {r: sizes.of(r) for r in ROLES},
        "sources": list(recipe.sources),
        "clients": {
            c.name: {
                "shares": dict(c.shares),
                "data": roots[c.name],
                "counts": {s: dict(sorted(v.items())) for s, v in sorted(counts[c.name].items())},
            }
            for c in recipe.clients
        },
        "totals": _totals(counts),
        "files": n_files,
    }
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    (partial / SUMMARY_NAME).write_text(text, encoding="utf-8")
    (partial / _PARTIAL_MARKER).unlink()

    if target.exists():
        shutil.rmtree(target)  # ours (checked above) or empty
    partial.rename(target)
    logger.info(
        "Mixture %s (%s, seed %d) in %s: %s, %d files, %.1f s",
        recipe.name,
        scale,
        seed,
        target,
        summary["totals"],
        n_files,
        time.perf_counter() - started,
    )
    return spec_path


def _totals(counts: Mapping[str, Mapping[str, Mapping[str, int]]]) -> dict[str, int]:
    """Images per kind over the whole mixture: ``train``, ``test/good``, ``test/anomalous``."""
    totals = {"train": 0, "test/good": 0, "test/anomalous": 0}
    for per_source in counts.values():
        for folders in per_source.values():
            for folder, n in folders.items():
                if folder == "train/good":
                    totals["train"] += n
                elif folder == "test/good":
                    totals["test/good"] += n
                else:
                    totals["test/anomalous"] += n
    return totals


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def register_cli(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``mixture`` to the ``feddymem data`` sub-commands.

    ``feddymem data mixture NAME --out DIR [--scale quick|full] [--seed S]
    [--shared-data DIR] [--elpv-cache DIR]`` builds one; ``feddymem data mixture --list``
    lists the recipes.  Errors raise :class:`MixtureError` (a ``DataError``).

    Args:
        subparsers: The sub-parsers of ``feddymem data``.

    Returns:
        The new parser (its ``func`` default is :func:`cmd_data_mixture`).
    """
    parser = subparsers.add_parser(
        "mixture",
        help="write a multi-source mixture (clients x sources, MVTec layout) and its spec",
        description="Write <out>/<name>/<client>/<source>/ MVTec-layout trees, "
        "<out>/<name>/federation.toml and mixture.json. Known: " + ", ".join(MIXTURES) + ".",
    )
    parser.add_argument("name", nargs="?", help="mixture name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the mixtures and exit")
    parser.add_argument("--out", type=Path, default=None, help="parent folder of the mixture")
    parser.add_argument(
        "--scale", choices=list(SCALES), default="quick", help="sizes (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help=f"folder with magnetic_tile/ and kolektorsdd/ (default: ${SHARED_DATA_ENV} or "
        "../shared/data)",
    )
    parser.add_argument(
        "--elpv-cache",
        type=Path,
        default=None,
        help="folder for the ELPV exports (default: <out>/_sources)",
    )
    parser.set_defaults(func=cmd_data_mixture)
    return parser


def cmd_data_mixture(args: argparse.Namespace) -> int:
    """Run ``feddymem data mixture``: list the recipes, or build one and print its summary."""
    if args.list:
        rows = [
            {
                "name": r.name,
                "description": r.description,
                "sources": list(r.sources),
                "clients": len(r.clients),
                "pixel_masks": r.pixel_masks,
                "needs_shared_data": r.needs_shared_data,
            }
            for r in MIXTURES.values()
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if args.name is None or args.out is None:
        raise MixtureError(
            "give a mixture name and --out DIR, or --list; known mixtures: "
            + ", ".join(sorted(MIXTURES))
        )
    spec = build_mixture(
        args.name,
        args.out,
        scale=args.scale,
        seed=args.seed,
        shared_data=args.shared_data,
        elpv_cache=args.elpv_cache,
    )
    summary = json.loads((spec.parent / SUMMARY_NAME).read_text(encoding="utf-8"))
    sys.stdout.write(
        json.dumps({"spec": str(spec), "totals": summary["totals"], "files": summary["files"]})
        + "\n"
    )
    return 0
