"""Weighted k-means (faiss): the step the client's optional k-means reduce and the server's
global memory share."""

from __future__ import annotations

import faiss
import numpy as np
import torch

FAISS_SEED_RANGE = 2**31 - 1  # faiss takes its seed as a C int


def faiss_seed(seed: int) -> int:
    """`seed` folded into the range faiss accepts: unchanged below 2**31 - 1, so derived seeds
    (a round's, a shadow run's) of any size give the same clustering they always did when small."""
    return int(seed) % FAISS_SEED_RANGE


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
        seed=faiss_seed(seed),
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
