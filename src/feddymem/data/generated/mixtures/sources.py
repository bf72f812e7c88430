"""Where the images of one mixture source come from: real MVTec-layout sets (with real or synthetic
anomalies), crops of a scikit-image texture, and the rendered products of one factory."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import Role
from feddymem.data.generated.products.defects import DEFECT_KINDS as PRODUCT_DEFECTS
from feddymem.data.generated.products.rendering import render_product
from feddymem.data.generated.synth.anomaly import SynthesisError
from feddymem.data.generated.synth.kinds import insert_anomaly
from feddymem.data.images import read_image, read_image_size, read_mask
from feddymem.data.layouts import scan_mvtec

logger = logging.getLogger(__name__)

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]

_TEXTURE_CROP = 128
_TEXTURE_TEST_ROWS = 160  # bottom rows of each 512 x 512 texture reserved for test crops
_PRODUCT_SIZE = 256


@dataclass(frozen=True)
class Item:
    """One image to write: pixels, defect (``"good"`` if normal), mask, file stem."""

    stem: str
    defect: str
    image: UInt8Array
    mask: BoolArray | None


class Source(ABC):
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
    def item(self, role: Role, index: int, rng: np.random.Generator) -> Item:
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


class FileSource(Source):
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

    def item(self, role: Role, index: int, rng: np.random.Generator) -> Item:
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
        return Item(stem=path.stem, defect=defect, image=image, mask=mask)


class SynthOnFilesSource(FileSource):
    """Real normals with synthetic anomalies (:mod:`feddymem.data.generated.synth`) and exact masks.

    Held-out normals and the bases of anomalies share the ``test/good`` pool, so an anomalous
    image is never a copy of a held-out or training one; real anomalies are not used.
    """

    def __init__(self, name: str, root: Path, *, max_side: int, kinds: Sequence[str]) -> None:
        super().__init__(name, root, max_side=max_side, need_masks=False)
        self.kinds = tuple(kinds)

    def pool_of(self, role: Role) -> str:
        return "train" if role == "train" else "good"

    def item(self, role: Role, index: int, rng: np.random.Generator) -> Item:
        if role != "anomalous":
            return super().item(role, index, rng)
        normal = super().item("good", index, rng)
        return _with_synthetic_anomaly(normal, self.kinds[index % len(self.kinds)], rng)


def _with_synthetic_anomaly(normal: Item, kind: str, rng: np.random.Generator) -> Item:
    """Insert one synthetic anomaly of ``kind`` into a normal item (grey stays grey)."""
    rgb = normal.image if normal.image.ndim == 3 else np.repeat(normal.image[..., None], 3, -1)
    try:
        result = insert_anomaly(np.ascontiguousarray(rgb), kind, rng)
    except SynthesisError as err:
        raise MixtureError(f"{normal.stem}: {err}") from err
    return Item(stem=normal.stem, defect=kind, image=_gray_if_equal(result.image), mask=result.mask)


class TextureSource(Source):
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

    def item(self, role: Role, index: int, rng: np.random.Generator) -> Item:
        h, w = self.texture.shape
        split = h - _TEXTURE_TEST_ROWS
        top, bottom = (0, split) if role == "train" else (split, h)
        y = int(rng.integers(top, bottom - _TEXTURE_CROP + 1))
        x = int(rng.integers(0, w - _TEXTURE_CROP + 1))
        crop = self.texture[y : y + _TEXTURE_CROP, x : x + _TEXTURE_CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pool = self.pool_of(role)
        normal = Item(
            stem=f"{pool}{index:05d}", defect="good", image=np.ascontiguousarray(crop), mask=None
        )
        if role != "anomalous":
            return normal
        return _with_synthetic_anomaly(normal, self.kinds[index % len(self.kinds)], rng)


class ProductSource(Source):
    """One factory of :mod:`feddymem.data.generated.products`; anomalies are rendered defects."""

    def pool_of(self, role: Role) -> str:
        return "train" if role == "train" else "test"

    def pool_size(self, pool: str) -> int | None:
        return None

    def item(self, role: Role, index: int, rng: np.random.Generator) -> Item:
        defect = PRODUCT_DEFECTS[index % len(PRODUCT_DEFECTS)] if role == "anomalous" else None
        rendered = render_product(self.name, rng, defect=defect, size=_PRODUCT_SIZE)
        return Item(
            stem=f"{self.pool_of(role)}{index:05d}",
            defect=rendered.defect,
            image=rendered.image,
            mask=rendered.mask,
        )
