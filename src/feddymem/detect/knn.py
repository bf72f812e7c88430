"""Exact nearest-neighbour search of patch vectors against a memory bank.

Two interchangeable backends behind :class:`NearestNeighbors`:

* ``"torch"`` (the detectors' default): one matrix product per chunk of queries,
  ``[q, 1] @ [-2 m, ||m||^2]^T``, then a two-level argmin (``k = 1``: the minimum of each block
  of 64 items, then the arg-minimum inside the winning block, several times faster than
  :func:`torch.argmin` over a whole row) or :func:`torch.topk`.
  Chunks of about a thousand queries keep the scores in cache; on this project's 2-core
  reference machine this ran a little faster than faiss's flat index for PatchCore's shapes
  (``benchmarks/detector.py --only speed`` times both on the same queries).
* ``"faiss"``: :class:`faiss.IndexFlatL2` (exact, brute force, BLAS), limited to
  ``torch.get_num_threads()`` OpenMP threads so torch and faiss do not oversubscribe the cores.

Both pick candidates with the fast inner-product expansion, then recompute the returned
distances directly as ``||q - m||`` (the expansion loses precision for near-duplicates, where
PatchCore scores live) and re-sort the ``k`` neighbours by that exact distance. Returned
distances are plain (not squared) Euclidean distances.

The ``"torch"`` backend has a bfloat16 screen, on by default where the CPU multiplies bfloat16
matrices in hardware (AVX512-BF16 or AMX; elsewhere PyTorch emulates them, slower than
float32). The matrix product runs in bfloat16 on centred vectors and gives
``||q - m||^2 + offset`` for every row, with a bound on its rounding error (inputs and scores
rounded to 8 significant bits, float32 accumulation) worked out per query. The k rows with the
smallest screened scores get their distances in float32; the true k-th nearest is no farther
than the farthest of them, and every row whose screened score the bound cannot put beyond that
distance is a candidate too, with its distance computed in float32 (``screen_candidates`` counts
them all; ``benchmarks/detector.py --only speed`` prints the mean a query). The offset keeps every
score positive, so bfloat16 scores compare as 16-bit integers, faster than as floats. The
screen thus returns the neighbours of a float32 search at the cost of a bfloat16 product;
``benchmarks/detector.py --only speed`` times both searches on the same queries and counts
where each differs from a float64 brute force. A chunk whose bound cannot be trusted
(non-finite or huge norms) is searched in float32 instead.

Both the float32 expansion and the screen work on vectors centred on the bank's mean:
distances do not change, and the expansion's cancellation error scales with the centred norms
rather than with the distance of the data from the origin.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = ["Backend", "NearestNeighbors", "native_bfloat16"]

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
# bfloat16 unit roundoff (8 significant bits, round to nearest).
_U_BF16 = 2.0**-8
# The screen's score of a padding item, and the largest scale (|q| + R)^2 the bound is trusted at.
_NEVER_BF16 = 1.0e30
_SCREEN_MAX_SCALE = 1.0e28


class _Screen(NamedTuple):
    """One chunk's screened scores: `scores` (c, M_padded) bfloat16, every entry positive, their
    16-bit integer `keys`, the keys' minima per block of _BLOCK items `block_keys` (c, M_padded /
    _BLOCK), and per query (c,) float64: the centred query's squared norm `qsq`, the rounding
    `bound` and the constant `const` (``qsq`` + the offset 2 `bound`)."""

    scores: Tensor
    keys: Tensor
    block_keys: Tensor
    qsq: Tensor
    bound: Tensor
    const: Tensor


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and bool(check()):
                return True
        except Exception:  # a private probe; its absence only means no screen
            continue
    return False


def _check_matrix(x: Tensor, *, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    # A finite sum means every entry is finite (a NaN or infinity would carry through); only a
    # non-finite sum (which overflow alone can cause) needs the entrywise check.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


class NearestNeighbors:
    """Exact k-nearest-neighbour index over a memory bank ``M`` of shape ``(M, D)``.

    Args:
        memory: ``(M, D)`` floating bank, finite, ``M >= 1``; stored as float32 on the CPU.
        backend: ``"torch"`` (default) or ``"faiss"``.
        screen: the ``"torch"`` backend's bfloat16 screen (see the module's text); ``None``
            (default): on where :func:`native_bfloat16`. Ignored by ``"faiss"``.

    Attributes:
        backend: the backend name.
        n_memory: ``M``.
        dim: ``D``.
        screen: whether searches go through the bfloat16 screen.
        screen_fallbacks: chunks of queries the screen sent to the float32 search so far.
        screen_candidates: candidates the screen kept so far, over ``screened_queries``
            queries.
    """

    def __init__(
        self, memory: Tensor, *, backend: Backend = "torch", screen: bool | None = None
    ) -> None:
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
        self._centre = self._memory.double().mean(dim=0).float()
        self._padded = -(-self.n_memory // _BLOCK) * _BLOCK  # items, a multiple of _BLOCK
        self.screen = backend == "torch" and (native_bfloat16() if screen is None else screen)
        self.screen_fallbacks = 0
        self.screen_candidates = 0
        self.screened_queries = 0
        if backend == "faiss":
            import faiss  # deferred: only this backend needs it

            self._index = faiss.IndexFlatL2(self.dim)
            self._index.add(self._memory.numpy())
        elif self.screen:
            self._build_screen()  # the float32 bank only if a chunk falls back
        else:
            self._build_float32()

    def _build_float32(self) -> Tensor:
        """The float32 search's (D + 1, M_padded) bank ``[-2 m, ||m||^2]^T`` of centred rows, so
        that ``[q, 1]`` times it is ``||m||^2 - 2 q.m`` in one product."""
        centred = self._memory - self._centre
        augmented = torch.zeros((self.dim + 1, self._padded), dtype=torch.float32)
        augmented[: self.dim, : self.n_memory] = centred.t() * -2.0
        augmented[self.dim, : self.n_memory] = torch.linalg.vector_norm(centred, dim=1).square_()
        augmented[self.dim, self.n_memory :] = _NEVER  # padding: 0 * q + _NEVER
        self._augmented = augmented
        return augmented

    def _build_screen(self) -> None:
        """The screen's (D + 4, M_padded) bfloat16 bank of centred rows: ``[-2 m, ||m||^2 (hi),
        ||m||^2 (lo), 1, 1]``, the squared norm split in two bfloat16s so it keeps 16 bits."""
        d, m = self.dim, self.n_memory
        centred = self._memory - self._centre
        sq = centred.double().square().sum(dim=1)
        self._radius = float(sq.max().sqrt())
        hi = sq.to(torch.bfloat16)
        bank = torch.zeros((d + 4, self._padded), dtype=torch.bfloat16)
        bank[:d, :m] = centred.t() * -2.0
        bank[d, :m] = hi
        bank[d + 1, :m] = (sq - hi.double()).to(torch.bfloat16)
        bank[d, m:] = _NEVER_BF16
        bank[d + 2 :] = 1.0
        self._screen_bank = bank

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
                part = slice(lo, min(lo + chunk, n))
                if self.screen and self._screen_search(q[part], k, indices[part], distances[part]):
                    continue  # the screen computed the float32 distances already
                if self.backend == "torch":
                    self._torch_candidates(q[part], k, out=indices[part])
                d2 = self._squared_distances(q[part], indices[part].reshape(-1))
                self._sorted(d2.view(-1, k), indices[part], indices[part], distances[part])
        return distances, indices

    @staticmethod
    def _sorted(d2: Tensor, rows: Tensor, out_rows: Tensor, out_dist: Tensor) -> None:
        """Write the ``(c, k)`` candidates ``rows`` with squared distances ``d2`` ascending by
        distance (stable) into ``out_rows``, and their plain distances into ``out_dist``."""
        if d2.shape[1] > 1:
            d2, order = torch.sort(d2, dim=1, stable=True)
            rows = torch.gather(rows, 1, order)
        out_rows.copy_(rows)
        torch.sqrt(d2, out=out_dist)

    def _faiss_candidates(self, q: Tensor, k: int, *, out: Tensor) -> None:
        """Fill ``out`` ``(N, k)`` with faiss's nearest indices."""
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        _, idx = self._index.search(q.numpy(), k)
        out.copy_(torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)))

    def _torch_candidates(self, q: Tensor, k: int, *, out: Tensor) -> None:
        """Fill ``out`` ``(c, k)`` with the rows minimising ``||m||^2 - 2 q.m`` (same order as
        ``||q - m||``; the query norm is constant per row)."""
        augmented = self._augmented if self._augmented is not None else self._build_float32()
        lhs = torch.empty((q.shape[0], self.dim + 1))
        torch.sub(q, self._centre, out=lhs[:, : self.dim])
        lhs[:, self.dim] = 1.0
        scores = lhs @ augmented
        if k == 1:
            # First occurrence of the row minimum, as torch.argmin would return it.
            blocks = scores.view(scores.shape[0], -1, _BLOCK)
            best = blocks.amin(dim=2).argmin(dim=1)
            inside = blocks[torch.arange(scores.shape[0]), best].argmin(dim=1)
            out[:, 0] = best * _BLOCK + inside
        else:
            real = scores[:, : self.n_memory]
            torch.topk(real, k, dim=1, largest=False, sorted=True, out=(real.new_empty(0), out))

    def _screen_search(self, q: Tensor, k: int, out_rows: Tensor, out_dist: Tensor) -> bool:
        """Fill ``out_rows`` and ``out_dist`` ``(c, k)`` with the k nearest rows and their
        distances through the bfloat16 screen; False (both untouched) when this chunk must go to
        the float32 search instead."""
        screen = self._screen_scores(q)
        if screen is None:
            self.screen_fallbacks += 1
            return False
        c = q.shape[0]
        # The screened k best rows A, and their squared distances in float32: the true k-th
        # nearest is at most as far as the farthest of A.
        screened = self._screened_best(screen, k)
        screened_d2 = self._squared_distances(q, screened.reshape(-1)).view(c, k)
        theta32 = self._screen_reach(screen, screened_d2)
        cq, rows = self._screen_candidates(screen, theta32, screened)
        self.screen_candidates += int(cq.numel()) + c * k
        self.screened_queries += c
        self._nearest_candidates(q, screened, screened_d2, cq, rows, out_rows, out_dist)
        return True

    def _screen_scores(self, q: Tensor) -> _Screen | None:
        """The bfloat16 product of the centred queries ``q`` (c, D) with the screen's bank:
        ``||qc - m||^2 + offset`` for every row, with the per-query rounding bound; None when the
        bound cannot be trusted (non-finite or huge norms, or a non-positive score)."""
        c, d = q.shape[0], self.dim
        qc = q - self._centre
        qn = torch.linalg.vector_norm(qc, dim=1).double()  # float32: within the gamma term
        qsq = qn.square()
        r = self._radius
        scale = (qn + r).square()
        if not bool(torch.isfinite(scale).all()) or float(scale.max()) > _SCREEN_MAX_SCALE:
            return None
        u, n = _U_BF16, d + 4
        gamma = n * 2.0**-24 / (1.0 - n * 2.0**-24)  # float32 accumulation of n products
        # |accumulated score - (||qc - m||^2 + offset)| <= bound: the rounded products (each
        # factor to 8 bits: 2(2u + u^2)|q||m|), the split norms and constants (u^2 of them) and
        # the accumulation (gamma of the sum of magnitudes, at most 4 * scale). Worst cases
        # throughout; the 1% margin is for the float64 arithmetic of the bound itself.
        bound = 1.01 * (2.0 * (2.0 * u + u * u) * qn * r + (4.0 * gamma + 2.0 * u * u) * scale)
        const = qsq + 2.0 * bound  # the offset (2 bound) keeps every accumulated score > 0
        const_hi = const.to(torch.bfloat16)
        lhs = torch.empty((c, n), dtype=torch.bfloat16)
        lhs[:, :d] = qc
        lhs[:, d : d + 2] = 1.0
        lhs[:, d + 2] = const_hi
        lhs[:, d + 3] = (const - const_hi.double()).to(torch.bfloat16)
        scores = lhs @ self._screen_bank  # (c, M_padded) bfloat16, every entry positive
        # Positive bfloat16s order as their 16-bit patterns: integer minima, not float ones.
        keys = scores.view(torch.int16)
        block_keys = keys.view(c, -1, _BLOCK).amin(dim=2)
        if bool((block_keys <= 0).any()):  # a non-positive score: the bound was not kept
            return None
        return _Screen(scores, keys, block_keys, qsq, bound, const)

    def _screened_best(self, screen: _Screen, k: int) -> Tensor:
        """(c, k) rows with the smallest screened scores (A), by the scores' integer keys."""
        c, nb = screen.block_keys.shape
        if k == 1:
            best_block = screen.block_keys.argmin(dim=1)
            inside_best = screen.keys.view(-1, _BLOCK).index_select(
                0, torch.arange(c) * nb + best_block
            )
            return (best_block * _BLOCK + inside_best.argmin(dim=1)).unsqueeze(1)
        return torch.topk(
            screen.keys[:, : self.n_memory], k, dim=1, largest=False, sorted=False
        ).indices

    def _screen_reach(self, screen: _Screen, screened_d2: Tensor) -> Tensor:
        """(c,) float32 screened-score threshold, rounded up, beyond which a row is farther than
        all of A (whose squared distances are `screened_d2`, (c, k)).

        The farthest of A is at d_A. A row j with d_j <= d_A has an accumulated score
        <= d_A + offset + bound, the offset is 2 bound up to the rounding of ||qc||^2 and of its
        bfloat16 split (slack), and its screened score is at most (1 + u) times that: every row
        over that threshold is farther than all of A."""
        d, u = self.dim, _U_BF16
        gamma_d = (d + 2) * 2.0**-24 / (1.0 - (d + 2) * 2.0**-24)
        slack = gamma_d * screen.qsq + u * u * screen.const
        reach = screened_d2.amax(dim=1).double() * (1.0 + gamma_d)
        theta = (reach + 3.0 * screen.bound + slack) * (1.0 + u) * (1.0 + 1e-6)
        return torch.nextafter(theta.float(), torch.tensor(float("inf")))  # rounded up

    def _screen_candidates(
        self, screen: _Screen, theta32: Tensor, screened: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(query, row) pairs of the real rows, not in A (`screened`), whose screened score is
        within `theta32`: first the blocks whose minimum is, then the rows inside them."""
        m = self.n_memory
        nb = screen.block_keys.shape[1]
        block_min = screen.block_keys.view(torch.bfloat16)
        # (index_select on flat views throughout: several times faster than fancy indexing)
        qi, bi = (block_min <= theta32[:, None]).nonzero(as_tuple=True)
        inside = screen.scores.view(-1, _BLOCK).index_select(0, qi * nb + bi)
        pi, ri = (inside <= theta32.index_select(0, qi)[:, None]).nonzero(as_tuple=True)
        cq = qi.index_select(0, pi)
        rows = bi.index_select(0, pi) * _BLOCK + ri
        # Other candidates: real rows not in A already.
        other = (rows < m) & (rows[:, None] != screened.index_select(0, cq)).all(dim=1)
        return cq[other], rows[other]

    def _nearest_candidates(
        self,
        q: Tensor,
        screened: Tensor,
        screened_d2: Tensor,
        cq: Tensor,
        rows: Tensor,
        out_rows: Tensor,
        out_dist: Tensor,
    ) -> None:
        """Write the k nearest of A (`screened`, (c, k), at `screened_d2`) and the other
        candidates (query `cq`, row `rows`) per query into ``out_rows`` and ``out_dist``, from a
        (c, k + most others) table: A's columns first, then the others in row order."""
        c, k = screened.shape
        table, row_table = screened_d2, screened
        if cq.numel():
            counts = torch.bincount(cq, minlength=c)
            width = k + int(counts.max())
            flat = torch.arange(cq.numel()) - (counts.cumsum(0) - counts).index_select(0, cq)
            flat += cq * width + k
            table = torch.full((c, width), float("inf"))
            table[:, :k] = screened_d2
            table.view(-1).index_copy_(0, flat, self._squared_distances(q, rows, queries=cq))
            row_table = torch.zeros((c, width), dtype=torch.int64)
            row_table[:, :k] = screened
            row_table.view(-1).index_copy_(0, flat, rows)
        if k == 1:
            best = table.argmin(dim=1, keepdim=True)
        else:
            best = torch.topk(table, k, dim=1, largest=False, sorted=False).indices
        self._sorted(table.gather(1, best), row_table.gather(1, best), out_rows, out_dist)

    def _squared_distances(
        self, q: Tensor, rows: Tensor, *, queries: Tensor | None = None
    ) -> Tensor:
        """``||q[queries[i]] - memory[rows[i]]||^2`` in float32 (``queries`` None: query i // k
        for k = len(rows) / len(q)), in pieces so a bank of near-copies, where every row can be
        a candidate, does not blow up the temporaries."""
        if queries is None:
            queries = torch.arange(q.shape[0]).repeat_interleave(rows.numel() // q.shape[0])
        d2 = torch.empty(rows.numel())
        piece = max(1, _CHUNK_FLOATS // self.dim)
        for lo in range(0, rows.numel(), piece):
            part = slice(lo, lo + piece)
            diff = q.index_select(0, queries[part]).sub_(self._memory.index_select(0, rows[part]))
            torch.sum(diff.square_(), dim=1, out=d2[part])
        return d2
