"""The registry of anomaly kinds by name, and inserting one anomaly of a named kind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from feddymem.data.generated.synth.anomaly import Anomaly, AnomalyFn, UInt8Array
from feddymem.data.generated.synth.blobs import blob
from feddymem.data.generated.synth.patches import cutpaste
from feddymem.data.generated.synth.perlin import perlin_blend
from feddymem.data.generated.synth.scratches import scratch

ANOMALY_KINDS: dict[str, AnomalyFn] = {
    "cutpaste": cutpaste,
    "perlin": perlin_blend,
    "scratch": scratch,
    "blob": blob,
}
"""Anomaly functions by the name configs, folders and the CLI use."""

DEFAULT_KINDS: tuple[str, ...] = tuple(ANOMALY_KINDS)


def insert_anomaly(
    image: UInt8Array, kind: str, rng: np.random.Generator, **options: Any
) -> Anomaly:
    """Insert one anomaly of a named kind.

    Args:
        image: ``(H, W, 3)`` uint8 normal image.
        kind: A key of :data:`ANOMALY_KINDS`.
        rng: Source of all randomness.
        **options: Keyword options of that kind's function (for example ``scar=True`` for
            ``"cutpaste"``); an option the function does not take raises ``TypeError``.

    Returns:
        The image with the anomaly and its ``(H, W)`` bool mask.
    """
    try:
        fn = ANOMALY_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown anomaly kind {kind!r}; known kinds: {', '.join(sorted(ANOMALY_KINDS))}"
        ) from None
    return fn(image, rng, **options)


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate anomaly kind names: known, at least one, no repeats."""
    names = tuple(kinds)
    if isinstance(kinds, str) or not names:
        raise ValueError(f"kinds must be a non-empty sequence of names, got {kinds!r}")
    unknown = [k for k in names if k not in ANOMALY_KINDS]
    if unknown:
        raise ValueError(
            f"unknown anomaly kinds {unknown}; known kinds: {', '.join(sorted(ANOMALY_KINDS))}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"anomaly kinds repeat: {list(names)}")
    return names
