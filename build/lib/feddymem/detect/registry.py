"""The registry of detector kinds: which class rebuilds a model file of each `kind`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from feddymem.detect.autoencoder import AutoencoderDetector
from feddymem.detect.base import Detector
from feddymem.detect.detector import MemoryBankDetector
from feddymem.detect.gaussian import GaussianDetector
from feddymem.detect.modelfile import ModelFileError, read_state

Loader = Callable[..., Detector]

KINDS: dict[str, Loader] = {
    "memory_bank": MemoryBankDetector.from_state,  # a FedDyMem site's G_k and M_g
    "patchcore": MemoryBankDetector.from_state,  # a DetectorConfig rebuilds a PatchCoreDetector
    "gaussian": GaussianDetector.from_state,
    "autoencoder": AutoencoderDetector.from_state,
}
"""kind (as saved in the file) -> `from_state(state, *, weights, where)`."""


def load_detector(
    path: Path, *, weights: Path | None = None, kind: type[Detector] | None = None
) -> Any:
    """Load any detector written by `save`; with `kind`, a file holding another kind of
    detector is a `ModelFileError`."""
    state = read_state(path)
    loader = KINDS.get(state.get("kind", "memory_bank"))
    if loader is None:
        raise ModelFileError(f"{path}: unknown detector kind {state.get('kind')!r}")
    detector = loader(state, weights=weights, where=str(path))
    if kind is not None and not isinstance(detector, kind):
        raise ModelFileError(f"{path} holds a {detector.kind!r} detector, not a {kind.kind!r} one")
    return detector
