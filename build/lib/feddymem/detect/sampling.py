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

# Cap on the (rows, centres) distance block of one greedy-coreset catch-up step: 2**21 floats.
_BLOCK_FLOATS = 1 << 21


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
    chunk_size: int = 1024,
    lazy: bool = True,
) -> Tensor:
    """k-center greedy (farthest-point) coreset, PatchCore's memory-bank subsampling.

    Starting from one seeded random row, repeatedly add the row farthest from the rows chosen so
    far: ``c_{t+1} = argmax_i min_{s <= t} ||x_i - c_s||``. Distances are taken in a seeded
    Johnson-Lindenstrauss projection ``x W``, ``W ~ N(0, 1/k)`` of shape ``(D, k)``, with
    ``k = projection_dim`` (skipped when ``projection_dim`` is None or ``D <= k``).

    Cost: the running minimum squared distance ``(N,)`` is updated lazily, chunk by chunk
    (`_lazy_farthest_points`): a chunk whose rows cannot hold the next farthest row is not
    touched, and one that can catches up with all the centres it missed in one matrix product.
    `benchmarks/detector.py --only coreset` times it against updating every row at every step
    (``lazy=False``) on 313,600 ELPV patch vectors and checks that both choose the same rows.
    No ``(N, M)`` matrix is formed.

    Args:
        features: ``(N, D)`` floating bank, finite.
        ratio: fraction of rows to keep, or
        size: number of rows to keep (exactly one of the two).
        projection_dim: ``k`` of the random projection, or None for none.
        seed: seeds both the projection and the first centre.
        chunk_size: rows per chunk of the lazy update: smaller chunks skip more rows, larger
            ones cost fewer steps (512 to 2,048 ran alike on the bank above; 16,384 took 1.6
            times as long as 1,024).
        lazy: False updates every row at every step instead (one matrix-vector pass over
            the whole bank per chosen row), the plain algorithm, kept as the reference the
            lazy update is checked and timed against.

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
        if projection_dim is not None and d > projection_dim:
            proj = torch.randn(d, projection_dim, generator=gen) / math.sqrt(projection_dim)
            x = torch.mm(x, proj.to(device))
        else:
            x = x.contiguous()
        first = int(torch.randint(n, (1,), generator=gen).item())
        if lazy:
            selected = _lazy_farthest_points(x, first, m, chunk_size)
        else:
            selected = _farthest_points_every_step(x, first, m, chunk_size)

    logger.debug(
        "greedy coreset %d -> %d (D=%d, k=%s) in %.2f s",
        n,
        m,
        d,
        projection_dim if projection_dim is not None and d > projection_dim else d,
        time.perf_counter() - start_time,
    )
    return selected.to(device)


def _farthest_points_every_step(x: Tensor, first: int, m: int, chunk_size: int) -> Tensor:
    """Farthest-point selection updating every row's running minimum at every step."""
    n = x.shape[0]
    # The transposed bank xt (k, N): a matrix-vector product over the columns of a row-major
    # (k, N) matrix streams memory far faster than over the rows of (N, k).
    xt = x.t().contiguous()
    sq_norms = torch.linalg.vector_norm(xt, dim=0).square_()
    min_d = torch.full((n,), math.inf, dtype=torch.float32)
    step_buf = torch.empty(min(chunk_size, n), dtype=torch.float32)
    selected = torch.empty(m, dtype=torch.int64)
    idx = first
    for t in range(m):
        selected[t] = idx
        if t == m - 1:
            break
        centre = xt[:, idx].clone()
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            buf = step_buf[: hi - lo]
            torch.addmv(sq_norms[lo:hi], xt[:, lo:hi].t(), centre, alpha=-2.0, out=buf)
            buf.add_(sq_norms[idx])
            torch.minimum(min_d[lo:hi], buf, out=min_d[lo:hi])
        min_d[idx] = -math.inf
        idx = int(torch.argmax(min_d).item())
    return selected


def _lazy_farthest_points(x: Tensor, first: int, m: int, chunk_size: int) -> Tensor:
    """Farthest-point selection over the rows of ``x`` ``(N, k)``, starting at row `first`.

    The running minimum squared distance of a row to the chosen centres only ever shrinks, so
    a stale value is an upper bound of the true one. Rows are kept in chunks, each with the
    number of centres it has been brought up to date with and its largest (stale) value. Every
    step brings chunks up to date in decreasing order of that largest value, against all the
    centres they have missed in one matrix product, and stops at the first chunk whose bound is
    below the best up-to-date value found: no row in it, or in any later chunk, can be the
    farthest. The choice is the same as updating every row at every step (the first row among
    equal maxima, as :func:`torch.argmax` picks), at a fraction of the passes over ``x``.
    """
    n, k = x.shape
    sq_norms = torch.linalg.vector_norm(x, dim=1).square_()  # (N,) ||x_i||^2
    min_d = torch.full((n,), math.inf, dtype=torch.float32)
    centres = torch.empty((m, k), dtype=torch.float32)
    centre_sq = torch.empty(m, dtype=torch.float32)
    selected = torch.empty(m, dtype=torch.int64)
    bounds = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
    upto = [0] * len(bounds)  # centres each chunk has been compared with
    chunk_max = torch.full((len(bounds),), math.inf, dtype=torch.float32)
    step = max(1, _BLOCK_FLOATS // chunk_size)  # centres per catch-up product

    idx = first
    for t in range(m):
        selected[t] = idx
        centres[t] = x[idx]
        centre_sq[t] = sq_norms[idx]
        # Chosen rows never come back (rounding may leave them slightly above zero).
        min_d[idx] = -math.inf
        home = idx // chunk_size
        lo, hi = bounds[home]
        chunk_max[home] = min_d[lo:hi].max()
        if t == m - 1:
            break
        best_value, best_idx = -math.inf, -1
        for j in torch.argsort(chunk_max, descending=True, stable=True).tolist():
            if float(chunk_max[j]) < best_value:
                break  # stale bounds only fall: nothing here or further on can win
            lo, hi = bounds[j]
            chunk = min_d[lo:hi]
            # ||x||^2 - 2 x.c + ||c||^2 against the centres this chunk has not seen yet, a
            # block of them at a time so the (rows, centres) temporary stays cache-sized.
            for c_lo in range(upto[j], t + 1, step):
                c_hi = min(c_lo + step, t + 1)
                dist = torch.addmm(
                    centre_sq[c_lo:c_hi].unsqueeze(0), x[lo:hi], centres[c_lo:c_hi].t(), alpha=-2.0
                )
                torch.minimum(chunk, dist.amin(dim=1).add_(sq_norms[lo:hi]), out=chunk)
            upto[j] = t + 1
            at = int(chunk.argmax())
            value = float(chunk[at])
            chunk_max[j] = value
            if value > best_value or (value == best_value and lo + at < best_idx):
                best_value, best_idx = value, lo + at
        idx = best_idx
    return selected


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
