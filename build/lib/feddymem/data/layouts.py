"""Finding the images, labels and masks of a data set on disk.

Two layouts are understood:

* MVTec AD: ``<root>/train/good/*``, ``<root>/test/<defect>/*`` (``good`` is normal) and
  ``<root>/ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``).
* A plain folder of normal images, optionally with a folder of anomalous images and a folder of
  masks matched by file stem; normals are split into train and test by a seeded permutation.

Scanning only lists files; nothing is decoded here (see :mod:`feddymem.data.loader`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from feddymem.data.images import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "Split",
    "scan",
    "scan_folder",
    "scan_mvtec",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File suffixes treated as images, compared in lower case."""

NORMAL_DEFECT = "good"
"""The defect name of normal samples, as in MVTec AD."""

_MVTEC_HELP = (
    "expected the MVTec AD layout <root>/train/good/*, <root>/test/<defect>/* and "
    "<root>/ground_truth/<defect>/<stem>_mask.png; for a plain folder of normal images "
    "(and optional anomalous and mask folders) use scan_folder(...)"
)


@dataclass(frozen=True)
class Sample:
    """One image of a data set.

    Attributes:
        path: Image file.
        label: 0 normal, 1 anomalous.
        defect: Defect type; ``"good"`` for normal samples.
        mask_path: Ground-truth mask of an anomalous sample, if the data set has one.
        source: Name of the data set the sample came from (tells sources apart in mixtures).
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise DataError(
                f"{self.path}: label must be 0 (normal) or 1 (anomalous), got {self.label!r}"
            )


@dataclass(frozen=True)
class Split:
    """A data set divided into normal training images and labelled test images.

    Attributes:
        name: Data-set name.
        train: Normal samples only (unsupervised training).
        test: Normal and anomalous samples.
    """

    name: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    def __post_init__(self) -> None:
        anomalous = [s.path for s in self.train if s.label != 0]
        if anomalous:
            raise DataError(
                f"split {self.name!r}: train must hold normal samples only; {len(anomalous)} "
                f"anomalous, first {anomalous[0]}"
            )

    def with_source(self, name: str) -> Split:
        """Return a copy named ``name`` whose samples all carry ``source=name``."""
        return Split(
            name=name,
            train=tuple(replace(s, source=name) for s in self.train),
            test=tuple(replace(s, source=name) for s in self.test),
        )

    def counts(self) -> dict[str, int]:
        """Number of samples per group: ``train``, ``test/good`` and ``test/<defect>``."""
        result = {"train": len(self.train)}
        for sample in self.test:
            key = f"test/{sample.defect}"
            result[key] = result.get(key, 0) + 1
        return result


def _is_image(path: Path) -> bool:
    # Hidden files such as macOS "._x.png" resource forks carry an image suffix but no image.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; other files are ignored."""
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    images = [p for p in entries if _is_image(p)]
    ignored = sum(1 for p in entries if p.is_file()) - len(images)
    if ignored:
        logger.debug("%s: ignored %d non-image files", folder, ignored)
    return images


def _require_dir(folder: Path, what: str) -> None:
    if not folder.exists():
        raise DataError(f"{folder}: {what} not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} is not a folder")


def _mask_index(folder: Path) -> dict[str, Path]:
    """Map each image stem in ``folder`` to its file (first by name when suffixes clash)."""
    index: dict[str, Path] = {}
    for path in _list_images(folder):
        index.setdefault(path.stem, path)
    return index


def _find_mask(index: dict[str, Path], stem: str) -> Path | None:
    return index.get(f"{stem}_mask") or index.get(stem)


def _log_missing_masks(name: str, missing: int, anomalous: int) -> None:
    if missing:
        logger.info(
            "%s: %d of %d anomalous test images have no mask; they count for image-level "
            "metrics only",
            name,
            missing,
            anomalous,
        )


def scan_mvtec(root: str | os.PathLike[str], *, name: str | None = None) -> Split:
    """List a data set stored in the MVTec AD layout.

    Args:
        root: Folder holding ``train/good``, ``test/<defect>`` and ``ground_truth/<defect>``.
        name: Data-set name; defaults to the folder name.  Samples carry it as ``source``.

    Returns:
        Split whose ``train`` is ``train/good`` and whose ``test`` holds every ``test/<defect>``
        image (sorted by defect, then file name), each anomalous one paired with its mask when
        ``ground_truth/<defect>/<stem>_mask.*`` or ``<stem>.*`` exists.

    Raises:
        DataError: ``root`` or ``root/train/good`` is missing, or ``train/good`` has no images.
    """
    base = Path(root)
    _require_dir(base, "data-set root")
    split_name = base.name if name is None else name
    good_dir = base / "train" / NORMAL_DEFECT
    if not good_dir.is_dir():
        raise DataError(f"{good_dir}: folder of normal training images not found; {_MVTEC_HELP}")
    train_paths = _list_images(good_dir)
    if not train_paths:
        raise DataError(f"{good_dir}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    train = tuple(
        Sample(path=p, label=0, defect=NORMAL_DEFECT, source=split_name) for p in train_paths
    )

    test: list[Sample] = []
    test_dir = base / "test"
    missing_masks = 0
    anomalous = 0
    if test_dir.is_dir():
        for defect_dir in sorted(
            (d for d in test_dir.iterdir() if d.is_dir()), key=lambda d: d.name
        ):
            defect = defect_dir.name
            if defect == NORMAL_DEFECT:
                test.extend(
                    Sample(path=p, label=0, defect=defect, source=split_name)
                    for p in _list_images(defect_dir)
                )
                continue
            mask_dir = base / "ground_truth" / defect
            masks = _mask_index(mask_dir) if mask_dir.is_dir() else {}
            for path in _list_images(defect_dir):
                mask = _find_mask(masks, path.stem)
                anomalous += 1
                missing_masks += mask is None
                test.append(
                    Sample(path=path, label=1, defect=defect, mask_path=mask, source=split_name)
                )
    else:
        logger.warning("%s: no test folder; the split has training images only", test_dir)
    _log_missing_masks(split_name, missing_masks, anomalous)
    return Split(name=split_name, train=train, test=tuple(test))


def scan_folder(
    normal_dir: str | os.PathLike[str],
    *,
    abnormal_dir: str | os.PathLike[str] | None = None,
    mask_dir: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    name: str | None = None,
) -> Split:
    """List a plain folder of normal images, plus optional anomalous images and masks.

    Normal images are divided by a seeded permutation: ``round(n * test_fraction)`` go to the
    test set, the rest to training; both parts keep file-name order.  Anomalous images all go
    to the test set with defect name ``abnormal_dir``'s folder name; each is paired with
    ``mask_dir/<stem>_mask.*`` or ``mask_dir/<stem>.*`` when present.

    Args:
        normal_dir: Folder of defect-free images.
        abnormal_dir: Folder of anomalous images.
        mask_dir: Folder of masks for the anomalous images.
        test_fraction: Share of normal images held out for testing, in ``[0, 1)``.
        seed: Seed of the permutation (``numpy.random.default_rng``).
        name: Data-set name; defaults to ``normal_dir``'s parent folder name.

    Returns:
        The split.

    Raises:
        DataError: a given folder is missing, ``normal_dir`` has no images, or no normal image
            would be left for training.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"{normal_dir}: test_fraction must be in [0, 1), got {test_fraction}")
    normal = Path(normal_dir)
    _require_dir(normal, "folder of normal images")
    split_name = (normal.parent.name or normal.name) if name is None else name
    normal_paths = _list_images(normal)
    if not normal_paths:
        raise DataError(f"{normal}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")

    n_test = round(len(normal_paths) * test_fraction)
    if n_test >= len(normal_paths):
        raise DataError(
            f"{normal}: {len(normal_paths)} normal images with test_fraction={test_fraction} "
            "leave none for training"
        )
    order = np.random.default_rng(seed).permutation(len(normal_paths))
    held_out = np.zeros(len(normal_paths), dtype=bool)
    held_out[order[:n_test]] = True

    def normals(chosen: Iterable[Path]) -> list[Sample]:
        return [Sample(path=p, label=0, defect=NORMAL_DEFECT, source=split_name) for p in chosen]

    train = normals(p for p, out in zip(normal_paths, held_out, strict=True) if not out)
    test = normals(p for p, out in zip(normal_paths, held_out, strict=True) if out)

    masks: dict[str, Path] = {}
    if mask_dir is not None:
        masks_folder = Path(mask_dir)
        _require_dir(masks_folder, "mask folder")
        masks = _mask_index(masks_folder)
    if abnormal_dir is not None:
        abnormal = Path(abnormal_dir)
        _require_dir(abnormal, "folder of anomalous images")
        abnormal_paths = _list_images(abnormal)
        if not abnormal_paths:
            logger.warning("%s: no anomalous image files", abnormal)
        missing = 0
        for path in abnormal_paths:
            mask = _find_mask(masks, path.stem)
            missing += mask is None
            test.append(
                Sample(path=path, label=1, defect=abnormal.name, mask_path=mask, source=split_name)
            )
        _log_missing_masks(split_name, missing, len(abnormal_paths))
    elif mask_dir is not None:
        logger.warning("%s: masks given without anomalous images; they are not used", mask_dir)
    return Split(name=split_name, train=tuple(train), test=tuple(test))


def scan(root: str | os.PathLike[str], *, name: str | None = None) -> Split:
    """List a data set, recognising its layout.

    Only the MVTec AD layout is detected automatically (a ``train/good`` folder); a plain folder
    needs :func:`scan_folder`, which must be told which folder holds what.

    Args:
        root: Data-set folder.
        name: Data-set name; defaults to the folder name.

    Returns:
        The split.

    Raises:
        DataError: ``root`` is missing or its layout is not recognised; the message lists the
            expected layouts and any sub-folders that look like MVTec categories.
    """
    base = Path(root)
    _require_dir(base, "data-set root")
    if (base / "train" / NORMAL_DEFECT).is_dir():
        return scan_mvtec(base, name=name)
    categories = sorted(
        d.name for d in base.iterdir() if d.is_dir() and (d / "train" / NORMAL_DEFECT).is_dir()
    )
    hint = (
        f"; it holds MVTec categories {', '.join(categories)}: pass one of them"
        if categories
        else ""
    )
    raise DataError(f"{base}: layout not recognised, {_MVTEC_HELP}{hint}")
