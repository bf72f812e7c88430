"""Input checks shared by the detection metrics: binary labels and masks, finite real scores."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Floating = np.floating[Any]


def as_labels(labels: ArrayLike, *, name: str = "labels") -> NDArray[np.bool_]:
    """Validate ``(N,)`` binary labels and return them as bool."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return _binary(arr, name=name)


def _binary(arr: NDArray[Any], *, name: str) -> NDArray[np.bool_]:
    """Return ``arr`` as bool, requiring bool dtype or numeric values in {0, 1}."""
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or numeric 0/1, got dtype {arr.dtype}")
    if not bool(np.all((arr == 0) | (arr == 1))):
        raise ValueError(f"{name} must contain only 0 and 1 (or be boolean)")
    return arr.astype(bool)


def _as_scores(scores: ArrayLike, *, name: str, ndim: int) -> NDArray[Floating]:
    """Validate finite real scores of dimension ``ndim``; integers are cast to float64."""
    arr = np.asarray(scores)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not bool(np.isfinite(arr).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def image_inputs(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[Floating]]:
    y = as_labels(labels)
    s = _as_scores(scores, name="scores", ndim=1)
    if s.shape != y.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have the same shape")
    return y, s


def pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[Floating]]:
    m_arr = np.asarray(masks)
    if m_arr.ndim != 3:
        raise ValueError(f"masks must be 3-D (N, H, W), got shape {m_arr.shape}")
    m = _binary(m_arr, name="masks")
    a = _as_scores(maps, name="maps", ndim=3)
    if a.shape != m.shape:
        raise ValueError(f"masks {m.shape} and maps {a.shape} must have the same shape")
    return m, a


def require_both_classes(y: NDArray[np.bool_], *, what: str) -> None:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        present = "anomalous" if n_pos else "normal"
        raise ValueError(
            f"{what} is undefined: only one class present (all {y.size} are {present})"
        )
