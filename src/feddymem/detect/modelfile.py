"""The model file: one `torch.save`d dict per fitted detector, its header and its checks.

Every detector kind writes the same header (`format`, `version`, `kind`, `config_class`,
`config` as JSON, `image_hw`, `threshold`, `map_floor`) and a payload of its own;
`feddymem.detect.registry.load_detector` reads the header and hands the rest to the kind.
Files are written to a unique temporary name beside the target and renamed over it, so a
reader never sees half a file and two writers never share a temporary file.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feddymem.outputs import atomic_open

log = logging.getLogger(__name__)

FORMAT = "feddymem-detector"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, corrupt or of an unknown format."""


def write_state(state: dict[str, Any], path: Path) -> Path:
    """`torch.save` `state` to `path` atomically (unique temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The dict of a model file, its format and version checked (tensors on the CPU; no
    pickled code is run: `weights_only`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read the model file ({err.strerror})") from err
    except Exception as err:  # torch raises many types for a corrupt file
        # torch's own message advises weights_only=False, which would run pickled code
        log.debug("torch.load(%s) failed: %s", path, err)
        raise ModelFileError(f"{path} is not a feddymem model file") from err
    return _checked(state, path)


def state_from_bytes(data: bytes, *, where: str | Path) -> dict[str, Any]:
    """`read_state` of a model file already read into memory (so that what is loaded is
    exactly what was hashed, even if the file is replaced meanwhile)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        log.debug("torch.load(%s) failed: %s", where, err)
        raise ModelFileError(f"{where} is not a feddymem model file") from err
    return _checked(state, where)


def _checked(state: Any, path: str | Path) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a feddymem model file")
    if state.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {state.get('version')}, expected {FORMAT_VERSION}"
        )
    return state


def map_floor_from_state(state: dict[str, Any], *, where: str) -> float | None:
    """The saved map floor: a finite float, or None (also for files written before it was
    saved, whose heat maps then start at zero)."""
    floor = state.get("map_floor")
    if floor is None:
        return None
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not math.isfinite(floor):
        raise ModelFileError(f"{where}: map_floor must be a finite number, got {floor!r}")
    return float(floor)


def calibration_scores_from_state(state: dict[str, Any], *, where: str) -> np.ndarray | None:
    """The saved normals' image scores that set the threshold: a 1-D tensor of finite values,
    or None (files written before they were kept: no thresholds for other rates)."""
    scores = state.get("calibration_scores")
    if scores is None:
        return None
    if (
        not isinstance(scores, torch.Tensor)
        or scores.ndim != 1
        or not bool(torch.isfinite(scores).all())
    ):
        raise ModelFileError(f"{where}: calibration_scores must be a 1-D tensor of finite values")
    return scores.float().numpy().copy()
