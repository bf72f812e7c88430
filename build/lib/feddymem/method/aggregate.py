"""Server aggregation: the global memory M_g from the union of the clients' reduced memories."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

if TYPE_CHECKING:
    from feddymem.method.reduce import ReducedMemory

log = logging.getLogger(__name__)


def weighted_kmeans(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    k: int,
    seed: int,
    iterations: int = 20,
    max_points_per_centroid: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means (faiss), (N, d) -> centres (k, d) and the weight each absorbed (k,).

    Seeded. faiss trains on at most `max_points_per_centroid * k` points (a seeded sample); the
    returned weights then count every input point's weight by its nearest centre.
    """
    data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    w = None if weights is None else np.ascontiguousarray(weights.cpu().numpy(), dtype=np.float32)
    n, d = data.shape
    if n <= k:
        return x.float().clone(), (torch.ones(n) if weights is None else weights.float().clone())
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    km = faiss.Kmeans(
        d,
        k,
        niter=iterations,
        seed=seed,
        verbose=False,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
    )
    if w is not None and n > max_points_per_centroid * k:
        # faiss cannot subsample weighted data itself: draw the sample here, seeded.
        idx = np.random.default_rng(seed).choice(n, size=max_points_per_centroid * k, replace=False)
        km.train(data[idx], weights=w[idx])
    else:
        km.train(data, weights=w)
    _, assign = km.index.search(data, 1)
    counts = np.bincount(assign[:, 0], weights=w, minlength=k).astype(np.float32)
    centres = torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))
    keep = counts > 0  # an empty cluster would be a memory item no patch is near
    return centres[torch.from_numpy(keep)], torch.from_numpy(counts[keep])


def aggregate_memories(
    memories: Sequence[ReducedMemory],
    *,
    num_centers: int | None,
    method: str = "kmeans",
    seed: int = 0,
    iterations: int = 20,
) -> torch.Tensor:
    """M_g (C, d) from the uploaded (M_k, weights): weighted k-means over their union.

    C defaults to the size of the largest client bank. 'mean' (ablation) averages the banks
    item by item, weighted, which needs banks of one shape (position-aligned memories).
    """
    if not memories:
        raise ValueError("no client memory to aggregate")
    dims = {m.vectors.shape[1] for m in memories}
    if len(dims) != 1:
        raise ValueError(f"client memories differ in dimension: {sorted(dims)}")
    size = num_centers or max(m.vectors.shape[0] for m in memories)
    if method == "kmeans":
        union = torch.cat([m.vectors for m in memories])
        weights = torch.cat([m.weights for m in memories])
        centres, _ = weighted_kmeans(union, weights, k=size, seed=seed, iterations=iterations)
        return centres
    if method == "mean":
        shapes = {tuple(m.vectors.shape) for m in memories}
        if len(shapes) != 1:
            raise ValueError(f"'mean' aggregation needs banks of one shape, got {sorted(shapes)}")
        stack = torch.stack([m.vectors for m in memories])  # (K, C, d)
        w = torch.stack([m.weights for m in memories]).unsqueeze(-1)  # (K, C, 1)
        return (stack * w).sum(0) / w.sum(0).clamp_min(1e-12)
    raise ValueError(f"unknown aggregation {method!r}; known: 'kmeans', 'mean'")
