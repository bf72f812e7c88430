"""Writing pixel-labelled MVTec-layout test sets with synthetic anomalies (:func:`synthesize_dataset`)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from feddymem.data.generated.synth.anomaly import MIN_CHANGE, SynthesisError, UInt8Array
from feddymem.data.generated.synth.kinds import DEFAULT_KINDS, check_kinds, insert_anomaly
from feddymem.data.images import ImageReadError, read_image

logger = logging.getLogger(__name__)

MARKER_NAME: str = "feddymem_synth.json"
"""File that marks a folder as the output of :func:`synthesize_dataset`."""

_MARKER_TOOL = "feddymem.data.synth"  # the marker format predates the move to data.generated; kept so older trees load
_MARKER_FORMAT = 1
_OWNED_ENTRIES = frozenset({"test", "ground_truth", "train", MARKER_NAME})


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_dataset` wrote.

    Attributes:
        out: Root of the MVTec-layout tree.
        seed: Seed used.
        kinds: Anomaly kinds requested, in order.
        n_good: Images written to ``test/good``.
        n_anomalous: Images written to ``test/<kind>`` (each with a mask).
        n_train: Images written to ``train/good``.
        per_kind: Anomalous images written per kind.
        skipped: Input files left out: unreadable, or unable to take an anomaly.
    """

    out: Path
    seed: int
    kinds: tuple[str, ...]
    n_good: int
    n_anomalous: int
    n_train: int
    per_kind: dict[str, int]
    skipped: tuple[Path, ...]

    @property
    def n_skipped(self) -> int:
        """Number of input files left out."""
        return len(self.skipped)


def _check_stems(paths: Sequence[Path], *, role: str) -> None:
    """Refuse inputs whose file stems collide (output names keep the stem)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(
                f"{role} files {seen[path.stem]} and {path} share the stem {path.stem!r}; "
                "output names keep the stem, so stems must be unique"
            )
        seen[path.stem] = path


def _plan_counts(total: int, n_good: int | None, n_anomalous: int | None) -> tuple[int, int, bool]:
    """Resolve the requested good / anomalous counts against ``total`` normals.

    Returns:
        ``(good, anomalous, good_first)``: the counts to aim for and whether the good role is
        filled first in the shuffled order.  A role the caller fixed is filled first, so files
        that turn out unreadable shorten the role that takes "the rest".
    """
    for name, value in (("n_good", n_good), ("n_anomalous", n_anomalous)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    good_first = not (n_good is None and n_anomalous is not None)
    if n_good is None:
        n_good = total // 2 if n_anomalous is None else max(0, total - n_anomalous)
    if n_anomalous is None:
        n_anomalous = total - n_good
    if n_good + n_anomalous > total:
        raise ValueError(
            f"n_good={n_good} + n_anomalous={n_anomalous} exceeds the {total} normals given"
        )
    return n_good, n_anomalous, good_first


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: create it, or clear a previous synthetic output it holds.

    Raises:
        SynthesisError: ``out`` is a file, or a non-empty folder that is not a previous output
            of :func:`synthesize_dataset` (or holds entries besides that output).
    """
    if out.exists() and not out.is_dir():
        raise SynthesisError(f"{out}: exists and is not a folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            marker = out / MARKER_NAME
            if not marker.is_file():
                raise SynthesisError(
                    f"{out}: folder is not empty and holds no {MARKER_NAME} from a previous "
                    "synthesis; refusing to write into it (choose an empty or new folder)"
                )
            try:
                tool = json.loads(marker.read_text(encoding="utf-8")).get("tool")
            except (OSError, ValueError, AttributeError) as err:
                raise SynthesisError(f"{marker}: unreadable marker file ({err})") from err
            if tool != _MARKER_TOOL:
                raise SynthesisError(f"{marker}: not a marker written by {_MARKER_TOOL}")
            foreign = [name for name in entries if name not in _OWNED_ENTRIES]
            if foreign:
                raise SynthesisError(
                    f"{out}: holds a previous synthetic output but also {foreign}; "
                    "refusing to overwrite it"
                )
            for name in ("test", "ground_truth", "train"):
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
            logger.info("Replacing the previous synthetic output in %s", out)
    out.mkdir(parents=True, exist_ok=True)


def _write_png(array: np.ndarray, path: Path) -> None:
    """Write an ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG (deterministic bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _write_marker(out: Path, payload: dict[str, Any]) -> None:
    """Write the marker JSON with sorted keys (byte-identical for identical content)."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    (out / MARKER_NAME).write_text(text, encoding="utf-8")


def _try_read(path: Path, skipped: list[Path]) -> UInt8Array | None:
    """Read an image, or log a warning, record it in ``skipped`` and return None."""
    try:
        return read_image(path)
    except ImageReadError as err:
        logger.warning("Skipping unreadable image: %s", err)
        skipped.append(path)
        return None


def _sorted_inputs(normals: Sequence[Path], train: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """The normals and the training files sorted by path; colliding stems and training files
    that are also normals (test leakage) are refused."""
    normal_paths = sorted((Path(p) for p in normals), key=str)
    train_paths = sorted((Path(p) for p in train), key=str)
    _check_stems(normal_paths, role="normal")
    _check_stems(train_paths, role="train")
    overlap = {p.resolve() for p in normal_paths} & {p.resolve() for p in train_paths}
    if overlap:
        raise ValueError(f"train and normals share files (test leakage): {sorted(overlap)}")
    return normal_paths, train_paths


@dataclass
class _TestWritten:
    """What :func:`_write_test_images` wrote: held-out normals, anomalies, anomalies per kind."""

    good: int
    anomalous: int
    per_kind: dict[str, int]


def _write_test_images(
    out: Path,
    normal_paths: Sequence[Path],
    names: tuple[str, ...],
    seed: int,
    targets: tuple[int, int, bool],
    skipped: list[Path],
) -> _TestWritten:
    """Deal the shuffled normals to ``test/good`` and to anomalies, kinds taken in turn, until
    both ``targets`` (good, anomalous, good first) are met; unusable files go to ``skipped``."""
    want_good, want_anomalous, good_first = targets
    root_seq = np.random.SeedSequence(seed)
    order_seq, item_seq = root_seq.spawn(2)
    order = np.random.default_rng(order_seq).permutation(len(normal_paths))
    item_seqs = item_seq.spawn(len(normal_paths))

    written = _TestWritten(good=0, anomalous=0, per_kind=dict.fromkeys(names, 0))
    for position, index in enumerate(order):
        good_open = written.good < want_good
        anomalous_open = written.anomalous < want_anomalous
        if not (good_open or anomalous_open):
            break
        path = normal_paths[int(index)]
        image = _try_read(path, skipped)
        if image is None:
            continue
        if good_open and (good_first or not anomalous_open):
            _write_png(image, out / "test" / "good" / f"{path.stem}.png")
            written.good += 1
            continue
        kind = names[written.anomalous % len(names)]
        rng = np.random.default_rng(item_seqs[position])
        try:
            result = insert_anomaly(image, kind, rng)
        except SynthesisError as err:
            logger.warning("Skipping %s: %s", path, err)
            skipped.append(path)
            continue
        _write_png(result.image, out / "test" / kind / f"{path.stem}.png")
        mask = np.where(result.mask, 255, 0).astype(np.uint8)
        _write_png(mask, out / "ground_truth" / kind / f"{path.stem}_mask.png")
        written.per_kind[kind] += 1
        written.anomalous += 1
    return written


def _write_train_images(out: Path, train_paths: Sequence[Path], skipped: list[Path]) -> int:
    """Resave the readable training files to ``train/good``; returns how many."""
    written_train = 0
    for path in train_paths:
        image = _try_read(path, skipped)
        if image is None:
            continue
        _write_png(image, out / "train" / "good" / f"{path.stem}.png")
        written_train += 1
    return written_train


def _warn_shortfalls(
    n_good: int | None, n_anomalous: int | None, written: _TestWritten, n_skipped: int
) -> None:
    """Log each count the caller gave that the readable files fell short of."""
    for role, asked, count in (
        ("good", n_good, written.good),
        ("anomalous", n_anomalous, written.anomalous),
    ):
        if asked is not None and count < asked:
            logger.warning(
                "Wrote %d %s test images of the %d requested (%d files skipped)",
                count,
                role,
                asked,
                n_skipped,
            )


def _finish(
    out: Path,
    settings: dict[str, Any],
    written: _TestWritten,
    written_train: int,
    skipped: list[Path],
) -> None:
    """Mark the output complete: the marker with the settings, counts and skipped files."""
    counts = {
        "good": written.good,
        "anomalous": written.anomalous,
        "per_kind": written.per_kind,
        "train": written_train,
        "skipped": len(skipped),
    }
    _write_marker(
        out,
        {
            "tool": _MARKER_TOOL,
            "format": _MARKER_FORMAT,
            "complete": True,
            "synthetic": True,
            "settings": settings,
            "counts": counts,
            "skipped": [str(p) for p in skipped],
        },
    )
    logger.info(
        "Synthetic set in %s: %d good, %d anomalous %s, %d train, %d skipped",
        out,
        written.good,
        written.anomalous,
        written.per_kind,
        written_train,
        len(skipped),
    )


def synthesize_dataset(
    normals: Sequence[Path],
    out: Path,
    *,
    seed: int = 0,
    kinds: Sequence[str] = DEFAULT_KINDS,
    n_anomalous: int | None = None,
    n_good: int | None = None,
    train: Sequence[Path] = (),
) -> SynthSummary:
    """Write a pixel-labelled MVTec-layout test set with synthetic anomalies.

    The normals are sorted by path and shuffled by ``seed``; in that order ``n_good`` readable
    ones are resaved as PNG to ``out/test/good/<stem>.png`` (held out, untouched) and
    ``n_anomalous`` readable ones receive one anomaly each (the count the caller fixed is
    served first, the other role takes the rest), kinds taken in turn, written to
    ``out/test/<kind>/<stem>.png`` with the mask
    ``out/ground_truth/<kind>/<stem>_mask.png`` (uint8 0 / 255, same size).  ``train`` images
    are resaved to ``out/train/good/<stem>.png``.  Unreadable files (and images too small for
    an anomaly) are skipped with a warning and listed in the summary and the marker
    ``out/feddymem_synth.json``, which also records the settings and counts.

    Same inputs and seed give byte-identical files.  Every anomalous image draws from its own
    generator, keyed by the seed and its position in the shuffled order.

    Args:
        normals: Normal image files to hold out or corrupt; stems must be unique.
        out: Output folder: new, empty, or a previous output of this function (replaced).
        seed: Seed of the shuffle and of every anomaly.
        kinds: Anomaly kinds (keys of :data:`ANOMALY_KINDS`), used in turn.
        n_anomalous: Anomalous images to write; None: all normals not held out as good.
        n_good: Normals held out as ``test/good``; None: the rest when ``n_anomalous`` is
            given, else half of the normals (rounded down).
        train: Normal files for ``train/good``; must not overlap ``normals``.

    Returns:
        The counts written and the files skipped.  With unreadable files a count can fall
        short of the request; a shortfall of a count the caller gave is logged.

    Raises:
        ValueError: bad kinds or counts, colliding stems, or ``train`` overlapping ``normals``.
        SynthesisError: ``out`` is not a folder this function may write into.
    """
    names = check_kinds(kinds)
    normal_paths, train_paths = _sorted_inputs(normals, train)
    targets = _plan_counts(len(normal_paths), n_good, n_anomalous)
    out = Path(out)
    _prepare_out(out)

    settings: dict[str, Any] = {
        "seed": seed,
        "kinds": list(names),
        "n_good": n_good,
        "n_anomalous": n_anomalous,
        "min_change": MIN_CHANGE,
        "n_normals_given": len(normal_paths),
        "n_train_given": len(train_paths),
    }
    # Written first so an interrupted run leaves a folder the next run may replace.
    _write_marker(
        out,
        {"tool": _MARKER_TOOL, "format": _MARKER_FORMAT, "complete": False, "settings": settings},
    )

    skipped: list[Path] = []
    written = _write_test_images(out, normal_paths, names, seed, targets, skipped)
    written_train = _write_train_images(out, train_paths, skipped)
    _warn_shortfalls(n_good, n_anomalous, written, len(skipped))
    _finish(out, settings, written, written_train, skipped)
    return SynthSummary(
        out=out,
        seed=seed,
        kinds=names,
        n_good=written.good,
        n_anomalous=written.anomalous,
        n_train=written_train,
        per_kind=written.per_kind,
        skipped=tuple(skipped),
    )
