"""Building a mixture folder: checking the target, writing into a partial folder, moving it into place."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.planning import Assignment, plan_assignments, stable_key
from feddymem.data.generated.mixtures.recipe import (
    ROLES,
    SCALES,
    BuildContext,
    MixtureRecipe,
    Scale,
    ScaleSizes,
)
from feddymem.data.generated.mixtures.registry import recipe_named
from feddymem.data.generated.mixtures.sources import Source
from feddymem.data.generated.mixtures.writing import count_files, spec_text, write_item
from feddymem.data.generated.protocols import Protocol, ProtocolError

logger = logging.getLogger(__name__)

SUMMARY_NAME = "mixture.json"
SPEC_NAME = "federation.toml"
_FORMAT = "feddymem-mixture"
_VERSION = 1
_PARTIAL_MARKER = ".feddymem_mixture_partial"


def _settings(recipe: MixtureRecipe, scale: str, seed: int, protocol: Protocol) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "name": recipe.name,
        "scale": scale,
        "seed": seed,
        "version": _VERSION,
    }
    if protocol.kind != "standard":  # standard builds keep their old settings (and files)
        settings["protocol"] = protocol.tag
    return settings


def folder_name(name: str, protocol: Protocol) -> str:
    """``NAME`` for the standard protocol, else ``NAME.few-8`` / ``NAME.new-variant``."""
    return name if protocol.kind == "standard" else f"{name}.{protocol.tag}"


def _home_sources(recipe: MixtureRecipe, protocol: Protocol) -> dict[str, str] | None:
    """new-variant: client -> the one source it trains on; its novel-source test images are
    written under that root too (file names keep their source prefix), since an MVTec root
    needs training normals."""
    if protocol.kind != "new-variant":
        return None
    return {
        c.name: protocol.train_shares(i, c.shares, recipe.sources)[0][0]
        for i, c in enumerate(recipe.clients)
    }


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
        isinstance(files, int) and count_files(target) == files and (target / SPEC_NAME).is_file()
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


def _checked_request(
    name: str, scale: Scale, seed: int, protocol: Protocol | str
) -> tuple[MixtureRecipe, ScaleSizes, Protocol]:
    """The recipe, sizes and protocol of a build, or a MixtureError saying what is wrong."""
    recipe = recipe_named(name)
    if scale not in SCALES:
        raise MixtureError(f"unknown scale {scale!r}; known scales: {', '.join(SCALES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MixtureError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = SCALES[scale]
    try:
        proto = protocol if isinstance(protocol, Protocol) else Protocol.parse(protocol)
        proto.check(len(recipe.clients), recipe.sources, sizes.train)
    except ProtocolError as err:
        raise MixtureError(f"mixture {recipe.name!r}: {err}") from None
    return recipe, sizes, proto


def _fresh_partial(partial: Path) -> Path:
    """Create the hidden build folder ``partial`` with its marker, clearing an unfinished one.

    Raises:
        MixtureError: ``partial`` exists and is not an unfinished mixture.
    """
    if partial.exists():
        if not (partial / _PARTIAL_MARKER).is_file():
            raise MixtureError(f"{partial}: exists and is not an unfinished mixture; remove it")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / _PARTIAL_MARKER).touch()
    return partial


Counts = dict[str, dict[str, dict[str, int]]]
"""Images written: client -> source -> folder key (``train/good``, ``test/<defect>``) -> count."""


def _write_items(
    partial: Path,
    recipe: MixtureRecipe,
    sources: Mapping[str, Source],
    plan: Sequence[Assignment],
    homes: Mapping[str, str] | None,
    seed: int,
) -> Counts:
    """Write every planned item under ``partial``; each item draws from its own generator,
    keyed by the seed, the recipe, the source, the pool and the item's index."""
    counts: Counts = {}
    for job in plan:
        source = sources[job.source]
        pool = source.pool_of(job.role)
        root = partial / job.client / (job.source if homes is None else homes[job.client])
        bucket = counts.setdefault(job.client, {}).setdefault(job.source, {})
        for index in job.indices:
            seq = np.random.SeedSequence(
                [seed, stable_key(recipe.name), stable_key(job.source), stable_key(pool), index]
            )
            item = source.item(job.role, index, np.random.default_rng(seq))
            if recipe.pixel_masks and job.role == "anomalous" and item.mask is None:
                raise MixtureError(f"{job.source} {item.stem}: anomalous image without a mask")
            kind = write_item(root, job.source, job.role, item)
            bucket[kind] = bucket.get(kind, 0) + 1
    return counts


def _write_spec_and_summary(
    partial: Path,
    recipe: MixtureRecipe,
    *,
    folder: str,
    seed: int,
    settings: Mapping[str, Any],
    sizes: ScaleSizes,
    protocol: Protocol,
    counts: Counts,
) -> dict[str, Any]:
    """Write ``federation.toml`` (each client's data: its source roots) and ``mixture.json``;
    returns the summary."""
    roots = {
        c.name: [f"{c.name}/{s}" for s in recipe.sources if (partial / c.name / s).is_dir()]
        for c in recipe.clients
    }
    text = spec_text(recipe, seed, roots, name=folder)
    (partial / SPEC_NAME).write_text(text, encoding="utf-8")
    n_files = count_files(partial)
    summary = {
        "format": _FORMAT,
        "settings": settings,
        "description": recipe.description,
        "pixel_masks": recipe.pixel_masks,
        "sizes_per_client": {r: sizes.of(r) for r in ROLES},
        "sources": list(recipe.sources),
        "protocol": protocol.tag,
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
    return summary


def build_mixture(
    name: str,
    out: Path,
    *,
    scale: Scale = "quick",
    seed: int = 0,
    shared_data: Path | None = None,
    elpv_cache: Path | None = None,
    protocol: Protocol | str = "standard",
) -> Path:
    """Write mixture ``name`` to ``<out>/<name>`` (layout in the module docstring); other
    protocols than ``standard`` go to ``<out>/<name>.<tag>`` (`protocols.Protocol`).

    Args:
        name: A key of :data:`MIXTURES`.
        out: Parent folder of the mixture folder.
        scale: ``"quick"`` or ``"full"``, per-client sizes from :data:`SCALES`.
        seed: Seed of the dealing and of every generated image or synthetic anomaly.
        shared_data: Folder holding ``magnetic_tile/`` and ``kolektorsdd/`` (``surface``);
            default :func:`default_shared_data`.
        elpv_cache: Folder for the ELPV exports the ELPV recipes read (``elpv-mono``,
            ``elpv-poly``, made once with seed 0 and reused); default ``<out>/_sources``.
        protocol: ``standard``, ``few-K`` or ``new-variant`` (or a Protocol).

    Returns:
        Path of the written ``federation.toml``.

    Raises:
        MixtureError: unknown name or scale, a negative seed, missing shared data, a pool too
            small for the scale, or a target folder this module did not write.
    """
    recipe, sizes, proto = _checked_request(name, scale, seed, protocol)
    base = Path(out).absolute()
    folder = folder_name(recipe.name, proto)
    target = base / folder
    spec_path = target / SPEC_NAME
    settings = _settings(recipe, scale, seed, proto)
    if _check_target(target, settings):
        logger.info("%s: complete mixture with the same settings found; reusing it", target)
        return spec_path

    started = time.perf_counter()
    ctx = BuildContext(
        mixture=recipe.name,
        seed=seed,
        shared_data=shared_data,
        elpv_cache=Path(elpv_cache) if elpv_cache is not None else base / "_sources",
    )
    sources = recipe.open_sources(ctx)
    plan = plan_assignments(recipe, sizes, sources, seed, proto)
    homes = _home_sources(recipe, proto)

    partial = _fresh_partial(base / f".{folder}.partial")
    counts = _write_items(partial, recipe, sources, plan, homes, seed)
    summary = _write_spec_and_summary(
        partial,
        recipe,
        folder=folder,
        seed=seed,
        settings=settings,
        sizes=sizes,
        protocol=proto,
        counts=counts,
    )
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
        summary["files"],
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
