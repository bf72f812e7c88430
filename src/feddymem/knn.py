"""Exact nearest-neighbour search of patch vectors against a memory bank.

Two interchangeable backends behind :class:`NearestNeighbors`:

* ``"torch"`` (the detectors' default): one matrix product per chunk of queries,
  ``[q, 1] @ [-2 m, ||m||^2]^T``, then a two-level argmin (``k = 1``: the minimum of each block
  of 64 items, then the arg-minimum inside the winning block, several times faster than
  :func:`torch.argmin` over a whole row) or :func:`torch.topk`.
  Chunks of about a thousand queries keep the scores in cache; on this project's 2-core
  reference machine this ran about three times faster than faiss's flat index for PatchCore's
  shapes (25k queries x 2.8k items x 152 dims; ``benchmarks/detector.py --only speed`` prints
  both rates).
* ``"faiss"``: :class:`faiss.IndexFlatL2` (exact, brute force, BLAS), limited to
  ``torch.get_num_threads()`` OpenMP threads so torch and faiss do not oversubscribe the cores.

Both pick candidates with the fast inner-product expansion, then recompute the returned
distances directly as ``||q - m||`` (the expansion loses precision for near-duplicates, where
PatchCore scores live) and re-sort the ``k`` neighbours by that exact distance. Returned
distances are plain (not squared) Euclidean distances.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = ["Backend", "NearestNeighbors"]

logger = logging.getLogger(__name__)

Backend = Literal["faiss", "torch"]

# Upper bound on the floats of one search chunk's temporaries ((chunk, M) scores or
# (chunk, k, D) differences): 2**22 float32 = 16 MiB, about 1,500 queries against 2,800 items
# (chunks of 512 to 2,048 queries ran equally fast there; 8,192 a third slower).
_CHUNK_FLOATS = 1 << 22
# Items per block of the two-level argmin; the bank is padded to a multiple of it with items
# that can never win (a score of _NEVER).
_BLOCK = 64
_NEVER = 3.0e38


def _check_matrix(x: Tensor, *, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


class NearestNeighbors:
    """Exact k-nearest-neighbour index over a memory bank ``M`` of shape ``(M, D)``.

    Args:
        memory: ``(M, D)`` floating bank, finite, ``M >= 1``; stored as float32 on the CPU.
        backend: ``"torch"`` (default) or ``"faiss"``.

    Attributes:
        backend: the backend name.
        n_memory: ``M``.
        dim: ``D``.
    """

    def __init__(self, memory: Tensor, *, backend: Backend = "torch") -> None:
        if backend not in get_args(Backend):
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(get_args(Backend))}")
        _check_matrix(memory, name="memory")
        if memory.shape[0] == 0 or memory.shape[1] == 0:
            raise ValueError(f"memory must be non-empty, got shape {tuple(memory.shape)}")
        self.backend: Backend = backend
        self._memory = memory.detach().to(device="cpu", dtype=torch.float32).contiguous()
        self.n_memory, self.dim = (int(s) for s in self._memory.shape)
        self._index: Any = None
        self._augmented: Tensor | None = None
        if backend == "faiss":
            import faiss  # deferred: only this backend needs it

            self._index = faiss.IndexFlatL2(self.dim)
            self._index.add(self._memory.numpy())
        else:
            # (D + 1, M): [-2 m, ||m||^2]^T, so that [q, 1] @ it = ||m||^2 - 2 q.m in one product.
            sq_norms = torch.linalg.vector_norm(self._memory, dim=1).square_()
            padded = -(-self.n_memory // _BLOCK) * _BLOCK
            augmented = torch.zeros((self.dim + 1, padded), dtype=torch.float32)
            augmented[: self.dim, : self.n_memory] = self._memory.t() * -2.0
            augmented[self.dim, : self.n_memory] = sq_norms
            augmented[self.dim, self.n_memory :] = _NEVER  # padding: 0 * q + _NEVER
            self._augmented = augmented

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest memory rows of every query.

        Args:
            queries: ``(N, D)`` floating, finite.
            k: neighbours per query, ``1 <= k <= M``.

        Returns:
            ``(distances, indices)``: ``(N, k)`` float32 plain Euclidean distances, ascending
            along each row, and ``(N, k)`` int64 row indices into the memory, on the CPU.
        """
        _check_matrix(queries, name="queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have D={queries.shape[1]}, memory has D={self.dim}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.n_memory:
            raise ValueError(f"k must be an int in [1, {self.n_memory}], got {k!r}")
        q = queries.detach().to(device="cpu", dtype=torch.float32).contiguous()
        n = q.shape[0]
        indices = torch.empty((n, k), dtype=torch.int64)
        distances = torch.empty((n, k), dtype=torch.float32)
        if n == 0:
            return distances, indices

        with torch.no_grad():
            if self.backend == "faiss":
                self._faiss_candidates(q, k, out=indices)
            # Chunk so neither (chunk, M) scores nor (chunk, k, D) differences exceed the cap.
            chunk = max(1, _CHUNK_FLOATS // max(self.n_memory, k * self.dim))
            for lo in range(0, n, chunk):
                hi = min(lo + chunk, n)
                if self.backend == "torch":
                    self._torch_candidates(q[lo:hi], k, out=indices[lo:hi])
                self._exact_distances(q[lo:hi], indices[lo:hi], out=distances[lo:hi])
        return distances, indices

    def _faiss_candidates(self, q: Tensor, k: int, *, out: Tensor) -> None:
        """Fill ``out`` ``(N, k)`` with faiss's nearest indices."""
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        _, idx = self._index.search(q.numpy(), k)
        out.copy_(torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)))

    def _torch_candidates(self, q: Tensor, k: int, *, out: Tensor) -> None:
        """Fill ``out`` ``(c, k)`` with the rows minimising ``||m||^2 - 2 q.m`` (same order as
        ``||q - m||``; the query norm is constant per row)."""
        assert self._augmented is not None
        scores = torch.cat([q, q.new_ones(q.shape[0], 1)], dim=1) @ self._augmented
        if k == 1:
            # First occurrence of the row minimum, as torch.argmin would return it.
            blocks = scores.view(scores.shape[0], -1, _BLOCK)
            best = blocks.amin(dim=2).argmin(dim=1)
            inside = blocks[torch.arange(scores.shape[0]), best].argmin(dim=1)
            out[:, 0] = best * _BLOCK + inside
        else:
            real = scores[:, : self.n_memory]
            torch.topk(real, k, dim=1, largest=False, sorted=True, out=(real.new_empty(0), out))

    def _exact_distances(self, q: Tensor, idx: Tensor, *, out: Tensor) -> None:
        """Set ``out`` ``(c, k)`` to ``||q - memory[idx]||`` and re-sort ``idx`` by it."""
        neighbours = self._memory[idx]  # (c, k, D)
        dist = torch.linalg.vector_norm(neighbours.sub_(q.unsqueeze(1)), dim=2)
        if idx.shape[1] > 1:
            dist, order = torch.sort(dist, dim=1, stable=True)
            idx.copy_(torch.gather(idx, 1, order))
        out.copy_(dist)
