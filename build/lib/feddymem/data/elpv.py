"""Exporting the ELPV solar-cell set to the MVTec AD layout.

The ``elpv-dataset`` package ships 2,624 electroluminescence images of solar cells (300 x 300,
grayscale), each rated by experts with a defect probability of 0, 1/3, 2/3 or 1, and typed
``mono`` or ``poly``.  The export keeps the certain ratings as an anomaly-detection set:

* probability 0 -> ``train/good`` and, by a seeded permutation, ``test/good``;
* probability 1 -> ``test/defect`` (no pixel masks exist: image-level evaluation only);
* probability 1/3 and 2/3 -> ``uncertain/p033`` and ``uncertain/p067``, outside ``train`` and
  ``test`` so MVTec readers ignore them.

File names carry the index into the package's label table (``cell_00042.png``).  The images are
licensed CC BY-NC-SA 4.0: export them outside the repository and never commit them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from feddymem.data.images import DataError

__all__ = ["ELPV_FOLDERS", "ElpvExportSummary", "export_elpv"]

logger = logging.getLogger(__name__)

CellType = Literal["mono", "poly", "all"]

MANIFEST_NAME = "feddymem_export.json"
"""The file that marks a folder as a finished export and records its settings and counts."""

_MANIFEST_FORMAT = "feddymem-elpv-export"
_MANIFEST_VERSION = 1
_PARTIAL_MARKER = ".feddymem_export_partial"

ELPV_FOLDERS: tuple[str, ...] = (
    "train/good",
    "test/good",
    "test/defect",
    "uncertain/p033",
    "uncertain/p067",
)
"""Folders of an export, relative to its root, in the order of :class:`ElpvExportSummary`."""

# Expert ratings and the folder each one goes to (probability 0 is split into train and test).
_RATING_FOLDERS: tuple[tuple[float, str], ...] = (
    (1.0, "test/defect"),
    (1.0 / 3.0, "uncertain/p033"),
    (2.0 / 3.0, "uncertain/p067"),
)
_RATING_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ElpvExportSummary:
    """Where an ELPV export is and how many images each folder holds.

    Attributes:
        out: Export root (MVTec layout; pass it to :func:`feddymem.data.scan_mvtec`).
        cell_type: ``"mono"``, ``"poly"`` or ``"all"``.
        seed: Seed of the train / test permutation of the normal cells.
        test_fraction: Share of normal cells held out in ``test/good``.
        train_good: Images in ``train/good``.
        test_good: Images in ``test/good``.
        test_defect: Images in ``test/defect``.
        uncertain_p033: Images in ``uncertain/p033``.
        uncertain_p067: Images in ``uncertain/p067``.
        reused: True when a complete export with these settings was already there.
    """

    out: Path
    cell_type: str
    seed: int
    test_fraction: float
    train_good: int
    test_good: int
    test_defect: int
    uncertain_p033: int
    uncertain_p067: int
    reused: bool = False

    def counts(self) -> dict[str, int]:
        """Images per folder, keyed as in :data:`ELPV_FOLDERS`."""
        values = (
            self.train_good,
            self.test_good,
            self.test_defect,
            self.uncertain_p033,
            self.uncertain_p067,
        )
        return dict(zip(ELPV_FOLDERS, values, strict=True))


def _settings(cell_type: str, seed: int, test_fraction: float) -> dict[str, Any]:
    return {"cell_type": cell_type, "seed": seed, "test_fraction": test_fraction}


def _count_png(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix == ".png" and p.is_file())


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of an earlier export in ``out``, or None when there is none."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable export manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        raise DataError(f"{path}: not a feddymem ELPV export manifest")
    return manifest


def _reuse_existing(out: Path, settings: dict[str, Any]) -> ElpvExportSummary | None:
    """Summary of a complete export with ``settings`` in ``out``; None when ``out`` is empty.

    Raises:
        DataError: ``out`` is not empty and does not hold a complete export with ``settings``.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"{out}: export target exists and is not a folder")
    if not any(out.iterdir()):
        return None
    manifest = _read_manifest(out)
    if manifest is None:
        raise DataError(
            f"{out}: folder is not empty and holds no ELPV export ({MANIFEST_NAME} missing); "
            "refusing to write into it, choose an empty or new folder"
        )
    if manifest.get("settings") != settings:
        raise DataError(
            f"{out}: holds an ELPV export with settings {manifest.get('settings')}, not "
            f"{settings}; remove it or choose another folder"
        )
    expected = manifest.get("counts", {})
    found = {folder: _count_png(out / folder) for folder in ELPV_FOLDERS}
    if found != expected:
        raise DataError(
            f"{out}: incomplete ELPV export, image counts {found} differ from the manifest's "
            f"{expected}; remove the folder and export again"
        )
    logger.info("%s: complete ELPV export with the same settings found; reusing it", out)
    return _summary(out, settings, found, reused=True)


def _summary(
    out: Path, settings: dict[str, Any], counts: dict[str, int], *, reused: bool
) -> ElpvExportSummary:
    return ElpvExportSummary(
        out=out,
        cell_type=str(settings["cell_type"]),
        seed=int(settings["seed"]),
        test_fraction=float(settings["test_fraction"]),
        train_good=counts["train/good"],
        test_good=counts["test/good"],
        test_defect=counts["test/defect"],
        uncertain_p033=counts["uncertain/p033"],
        uncertain_p067=counts["uncertain/p067"],
        reused=reused,
    )


def _assign_folders(
    probabilities: np.ndarray, *, seed: int, test_fraction: float
) -> dict[str, np.ndarray]:
    """Indices of the selected cells per export folder.

    Args:
        probabilities: ``(N,)`` expert ratings of the selected cells.
        seed: Seed of the permutation that holds out normal cells for testing.
        test_fraction: Share of normal cells held out.

    Returns:
        Sorted index arrays into ``probabilities``, keyed as in :data:`ELPV_FOLDERS`.
    """
    assigned = np.zeros(len(probabilities), dtype=bool)
    folders: dict[str, np.ndarray] = {}
    normal = np.flatnonzero(np.abs(probabilities) <= _RATING_TOLERANCE)
    assigned[normal] = True
    order = np.random.default_rng(seed).permutation(len(normal))
    n_test = round(len(normal) * test_fraction)
    folders["test/good"] = np.sort(normal[order[:n_test]])
    folders["train/good"] = np.sort(normal[order[n_test:]])
    for rating, folder in _RATING_FOLDERS:
        chosen = np.flatnonzero(np.abs(probabilities - rating) <= _RATING_TOLERANCE)
        assigned[chosen] = True
        folders[folder] = chosen
    if not assigned.all():
        odd = sorted({float(p) for p in probabilities[~assigned]})
        raise DataError(f"elpv-dataset: unexpected defect probabilities {odd}")
    return {folder: folders[folder] for folder in ELPV_FOLDERS}


def _load_elpv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``(N, 300, 300)`` uint8, probabilities ``(N,)`` and cell types ``(N,)``."""
    # Looked up at call time so the (slow, full) package loader is only touched when exporting.
    from elpv_dataset import utils as elpv_utils

    images, probabilities, types = elpv_utils.load_dataset()
    return np.asarray(images), np.asarray(probabilities, dtype=np.float64), np.asarray(types)


def export_elpv(
    out: str | os.PathLike[str],
    *,
    cell_type: CellType = "mono",
    seed: int = 0,
    test_fraction: float = 0.3,
) -> ElpvExportSummary:
    """Write the ELPV cells as an MVTec-layout data set (see the module docstring).

    The export is built in a hidden sibling folder and moved into place at the end, so ``out``
    either holds a complete export with its ``feddymem_export.json`` (settings and counts) or
    nothing.  Calling again with the same settings reuses it without rewriting.

    Args:
        out: Export folder; must be missing, empty, or a complete export with the same settings.
        cell_type: Which cells: ``"mono"`` (monocrystalline), ``"poly"`` or ``"all"``.
        seed: Seed of the permutation that holds normal cells out for ``test/good``.
        test_fraction: Share of normal cells in ``test/good``, in ``[0, 1)``.

    Returns:
        The summary with the number of images per folder.

    Raises:
        DataError: ``out`` holds something else, or the package data is not as documented.
        ValueError: an option is out of range.
    """
    if cell_type not in ("mono", "poly", "all"):
        raise ValueError(f"cell_type must be 'mono', 'poly' or 'all', got {cell_type!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    # Absolute, so the hidden sibling used while writing has a real parent and name.
    target = Path(out).absolute()
    settings = _settings(cell_type, seed, float(test_fraction))
    existing = _reuse_existing(target, settings)
    if existing is not None:
        return existing

    images, probabilities, types = _load_elpv()
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(probabilities):
        raise DataError(
            f"elpv-dataset: expected (N, H, W) uint8 images with N ratings, got images "
            f"{images.shape} {images.dtype} and {len(probabilities)} ratings"
        )
    selected = np.arange(len(images)) if cell_type == "all" else np.flatnonzero(types == cell_type)
    folders = _assign_folders(probabilities[selected], seed=seed, test_fraction=test_fraction)

    partial = target.parent / f".{target.name}.partial"
    if partial.exists():
        if not (partial / _PARTIAL_MARKER).is_file():
            raise DataError(f"{partial}: exists and is not an unfinished ELPV export; remove it")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / _PARTIAL_MARKER).touch()

    counts: dict[str, int] = {}
    for folder, positions in folders.items():
        folder_path = partial / folder
        folder_path.mkdir(parents=True, exist_ok=True)
        for index in selected[positions]:
            Image.fromarray(images[index]).save(folder_path / f"cell_{int(index):05d}.png")
        counts[folder] = len(positions)

    manifest = {
        "format": _MANIFEST_FORMAT,
        "version": _MANIFEST_VERSION,
        "source": "elpv-dataset (images CC BY-NC-SA 4.0)",
        "settings": settings,
        "counts": counts,
    }
    (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (partial / _PARTIAL_MARKER).unlink()
    if target.exists():
        target.rmdir()  # empty, checked above
    partial.rename(target)
    summary = _summary(target, settings, counts, reused=False)
    logger.info("%s: exported ELPV %s cells %s", target, cell_type, counts)
    return summary
