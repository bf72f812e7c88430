"""Memory-bank subsampling for PatchCore-style detectors.

A local memory bank ``M`` of ``N`` patch vectors (``(N, D)``) is reduced to ``M'`` of ``M`` rows
(``M = round(ratio * N)`` or an explicit ``size``). Three samplers, looked up by name in
:data:`SAMPLERS`:

* ``"random"``: a seeded uniform draw without replacement.
* ``"greedy"``: k-center greedy (farthest-point) coreset, as in PatchCore, on a seeded
  Johnson-Lindenstrauss projection of the features.
* ``"none"``: every row.

Every sampler returns ``int64`` row indices ``(M,)``; :func:`subsample` returns the rows.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "SAMPLERS",
    "Sampler",
    "all_indices",
    "greedy_coreset",
    "random_subsample",
    "resolve_size",
    "sample_indices",
    "subsample",
]

logger = logging.getLogger(__name__)


class Sampler(Protocol):
    """Signature shared by the registered samplers: features ``(N, D)`` -> indices ``(M,)``."""

    def __call__(
        self,
        features: Tensor,
        *,
        ratio: float | None = None,
        size: int | None = None,
        seed: int,
    ) -> Tensor: ...


def _check_features(features: Tensor) -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values")


def resolve_size(n: int, *, ratio: float | None, size: int | None) -> int:
    """Number of rows to keep out of ``n``: exactly one of ``ratio`` and ``size``.

    Args:
        n: bank size ``N`` (>= 1).
        ratio: fraction in (0, 1]; gives ``max(1, round(ratio * n))`` (round half to even).
        size: absolute count in [1, n].

    Returns:
        ``M`` with ``1 <= M <= n``.
    """
    if (ratio is None) == (size is None):
        raise ValueError("give exactly one of ratio and size")
    if ratio is not None:
        if isinstance(ratio, bool) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        return max(1, min(n, round(ratio * n)))
    assert size is not None
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"size must be an int, got {size!r}")
    if not 1 <= size <= n:
        raise ValueError(f"size must be in [1, {n}] (the bank size), got {size}")
    return size


def random_subsample(
    features: Tensor,
    *,
    ratio: float | None = None,
    size: int | None = None,
    seed: int,
) -> Tensor:
    """Uniform random rows without replacement.

    Args:
        features: ``(N, D)`` bank; only its shape is used (and checked).
        ratio: fraction of rows to keep, or
        size: number of rows to keep (exactly one of the two).
        seed: seed of a private :class:`torch.Generator`.

    Returns:
        ``(M,)`` int64 distinct row indices, ascending.
    """
    _check_features(features)
    n = features.shape[0]
    m = resolve_size(n, ratio=ratio, size=size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:m].sort().values


def all_indices(
    features: Tensor,
    *,
    ratio: float | None = None,
    size: int | None = None,
    seed: int,
) -> Tensor:
    """Every row: ``arange(N)``. ``ratio``, ``size`` and ``seed`` are accepted and ignored.

    Returns:
        ``(N,)`` int64.
    """
    _check_features(features)
    if ratio is not None or size is not None:
        logger.debug("sampler 'none' keeps all %d rows; ratio/size ignored", features.shape[0])
    return torch.arange(features.shape[0])


def greedy_coreset(
    features: Tensor,
    *,
    ratio: float | None = None,
    size: int | None = None,
    projection_dim: int | None = 128,
    seed: int,
    chunk_size: int = 16384,
) -> Tensor:
    """k-center greedy (farthest-point) coreset, PatchCore's memory-bank subsampling.

    Starting from one seeded random row, repeatedly add the row farthest from the rows chosen so
    far: ``c_{t+1} = argmax_i min_{s <= t} ||x_i - c_s||``. Distances are taken in a seeded
    Johnson-Lindenstrauss projection ``x W``, ``W ~ N(0, 1/k)`` of shape ``(D, k)``, with
    ``k = projection_dim`` (skipped when ``projection_dim`` is None or ``D <= k``).

    Cost: ``M`` passes over the projected ``(N, k)`` float32 matrix, each one matrix-vector
    product; memory ``O(N k)`` plus three ``(N,)`` / ``(chunk_size,)`` vectors allocated once.
    The running minimum squared distance ``(N,)`` is updated in place, chunk by chunk, with
    ``||x||^2 - 2 x.c + ||c||^2`` (precomputed norms); no ``(N, M)`` matrix is formed.

    Args:
        features: ``(N, D)`` floating bank, finite.
        ratio: fraction of rows to keep, or
        size: number of rows to keep (exactly one of the two).
        projection_dim: ``k`` of the random projection, or None for none.
        seed: seeds both the projection and the first centre.
        chunk_size: rows per update step. Keeps the step temporaries cache-sized and, at or
            below torch's 32768-element grain size, keeps the element-wise updates
            single-threaded (larger chunks measured up to 10x slower on a busy 2-core host).

    Returns:
        ``(M,)`` int64 distinct row indices in selection order (every prefix of length ``j`` is
        the greedy coreset of size ``j``).
    """
    _check_features(features)
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n, d = features.shape
    m = resolve_size(n, ratio=ratio, size=size)
    gen = torch.Generator().manual_seed(seed)
    device = features.device
    start_time = time.perf_counter()

    with torch.no_grad():
        x = features.detach().to(torch.float32)
        # Work on the transposed bank xt (k, N): a matrix-vector product over the columns of a
        # row-major (k, N) matrix streams memory far faster than over the rows of (N, k).
        if projection_dim is not None and d > projection_dim:
            proj = torch.randn(d, projection_dim, generator=gen) / math.sqrt(projection_dim)
            xt = torch.mm(proj.to(device).t(), x.t())
        else:
            xt = x.t().contiguous()
        del x
        first = int(torch.randint(n, (1,), generator=gen).item())

        sq_norms = torch.linalg.vector_norm(xt, dim=0).square_()  # (N,) ||x_i||^2
        min_d = torch.full((n,), math.inf, dtype=torch.float32, device=device)
        step_buf = torch.empty(min(chunk_size, n), dtype=torch.float32, device=device)
        centre = torch.empty(xt.shape[0], dtype=torch.float32, device=device)
        selected = torch.empty(m, dtype=torch.int64)
        bounds = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]

        idx = first
        for t in range(m):
            selected[t] = idx
            if t == m - 1:
                break
            centre.copy_(xt[:, idx])
            centre_sq = sq_norms[idx]
            for lo, hi in bounds:
                buf = step_buf[: hi - lo]
                # buf = ||x||^2 - 2 x.c + ||c||^2 over the chunk, then min into the running min.
                torch.addmv(sq_norms[lo:hi], xt[:, lo:hi].t(), centre, alpha=-2.0, out=buf)
                buf.add_(centre_sq)
                chunk_min = min_d[lo:hi]
                torch.minimum(chunk_min, buf, out=chunk_min)
            # Chosen rows never come back (rounding may leave them slightly above zero).
            min_d[idx] = -math.inf
            idx = int(torch.argmax(min_d).item())

    logger.debug(
        "greedy coreset %d -> %d (D=%d, k=%s) in %.2f s",
        n,
        m,
        d,
        projection_dim if projection_dim is not None and d > projection_dim else d,
        time.perf_counter() - start_time,
    )
    return selected.to(device)


SAMPLERS: dict[str, Sampler] = {
    "random": random_subsample,
    "greedy": greedy_coreset,
    "none": all_indices,
}
"""Registered samplers by name (the name configs and the CLI carry)."""


def sample_indices(
    features: Tensor,
    *,
    method: str,
    ratio: float | None = None,
    size: int | None = None,
    seed: int,
) -> Tensor:
    """Row indices ``(M,)`` chosen by the sampler registered as ``method``.

    Registry defaults apply (greedy: ``projection_dim=128``); call a sampler directly for
    other options.
    """
    try:
        sampler = SAMPLERS[method]
    except KeyError:
        known = ", ".join(sorted(SAMPLERS))
        raise ValueError(f"unknown sampling method {method!r}; known: {known}") from None
    return sampler(features, ratio=ratio, size=size, seed=seed)


def subsample(
    features: Tensor,
    *,
    method: str,
    ratio: float | None = None,
    size: int | None = None,
    seed: int,
) -> Tensor:
    """Subsampled memory bank.

    Args:
        features: ``(N, D)`` bank.
        method: a key of :data:`SAMPLERS` (``"random"``, ``"greedy"``, ``"none"``).
        ratio: fraction of rows to keep, or
        size: number of rows to keep (exactly one, except for ``"none"``).
        seed: seed of every random step.

    Returns:
        ``(M, D)`` rows of ``features`` (same dtype and device).
    """
    idx = sample_indices(features, method=method, ratio=ratio, size=size, seed=seed)
    return features[idx]
