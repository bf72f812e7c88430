"""Server aggregation: the global memory M_g from the union of the clients' reduced memories."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from feddymem.method.kmeans import weighted_kmeans
from feddymem.method.reduce import ReducedMemory

log = logging.getLogger(__name__)


def aggregate_memories(
    memories: Sequence[ReducedMemory],
    *,
    num_centers: int | None,
    method: str = "kmeans",
    seed: int = 0,
    iterations: int = 20,
) -> torch.Tensor:
    """M_g (C, d) from the uploaded (M_k, weights): weighted k-means over their union.

    C defaults to the size of the largest client bank. 'union' keeps every item of every bank
    as it came, in upload order (C = the sum of the bank sizes; `num_centers` is not used).
    'mean' (ablation) averages the banks item by item, weighted, which needs banks of one shape
    (position-aligned memories).
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
    if method == "union":
        return torch.cat([m.vectors for m in memories])
    if method == "mean":
        shapes = {tuple(m.vectors.shape) for m in memories}
        if len(shapes) != 1:
            raise ValueError(f"'mean' aggregation needs banks of one shape, got {sorted(shapes)}")
        stack = torch.stack([m.vectors for m in memories])  # (K, C, d)
        w = torch.stack([m.weights for m in memories]).unsqueeze(-1)  # (K, C, 1)
        return (stack * w).sum(0) / w.sum(0).clamp_min(1e-12)
    raise ValueError(f"unknown aggregation {method!r}; known: 'kmeans', 'union', 'mean'")
