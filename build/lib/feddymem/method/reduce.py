"""Memory-reduce: a client's patch vectors -> the small weighted memory M_k it uploads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from feddymem.detect.knn import NearestNeighbors
from feddymem.detect.sampling import greedy_coreset
from feddymem.method.aggregate import weighted_kmeans


@dataclass(frozen=True)
class ReducedMemory:
    """What a client uploads: `vectors` M_k (C, d) float32, `weights` (C,) float32 (how many
    patch vectors each item absorbed), `n_images` n_k."""

    vectors: torch.Tensor
    weights: torch.Tensor
    n_images: int

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * 4 + self.weights.numel() * 4


def position_average(
    z: torch.Tensor, *, gamma_c: int = 1, seed: int = 0, iterations: int = 20
) -> ReducedMemory:
    """The paper's weighted average: one mean vector per grid position, (N, d, H, W) -> H*W items.

    Equal to the running update M <- (i M + mean_{B_i} z) / (i + 1) over equal batches. With
    gamma_c > 1 a local weighted k-means shrinks it further to H*W / gamma_c items.
    """
    n, d, h, w = z.shape
    vectors = z.float().mean(dim=0).permute(1, 2, 0).reshape(h * w, d)
    weights = torch.full((h * w,), float(n))
    if gamma_c > 1:
        size = max(1, (h * w) // gamma_c)
        vectors, weights = weighted_kmeans(
            vectors, weights, k=size, seed=seed, iterations=iterations
        )
    return ReducedMemory(vectors=vectors.contiguous(), weights=weights, n_images=n)


def kmeans_reduce(
    z: torch.Tensor, *, size: int, seed: int = 0, iterations: int = 20
) -> ReducedMemory:
    """k-means over all patch vectors, (N, d, H, W) -> `size` centres weighted by cluster size."""
    n, d = z.shape[0], z.shape[1]
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)
    if flat.shape[0] <= size:
        return ReducedMemory(
            vectors=flat.contiguous(), weights=torch.ones(flat.shape[0]), n_images=n
        )
    vectors, weights = weighted_kmeans(flat, None, k=size, seed=seed, iterations=iterations)
    return ReducedMemory(vectors=vectors, weights=weights, n_images=n)


def coreset_reduce(
    z: torch.Tensor, *, size: int, seed: int = 0, projection_dim: int = 128
) -> ReducedMemory:
    """Greedy k-center coreset (PatchCore's) of all patch vectors, (N, d, H, W) -> `size` items,
    each weighted by the number of patch vectors nearest to it.

    k-means centres are means: a rare normal pattern (an edge, a busbar crossing) is averaged
    into its neighbours and then reads as anomalous at test time. The k-center coreset keeps a
    real patch vector from every region of the feature space instead, so the memory covers the
    rare patterns too; each item is still backed by many images' vectors through its weight.
    """
    n, d = z.shape[0], z.shape[1]
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, d).contiguous()
    if flat.shape[0] <= size:
        return ReducedMemory(vectors=flat, weights=torch.ones(flat.shape[0]), n_images=n)
    idx = greedy_coreset(flat, size=size, seed=seed, projection_dim=projection_dim)
    centres = flat[idx].contiguous()
    _, nearest = NearestNeighbors(centres, backend="faiss").search(flat, 1)
    weights = torch.bincount(nearest[:, 0], minlength=centres.shape[0]).float()
    return ReducedMemory(vectors=centres, weights=weights, n_images=n)


def no_reduce(z: torch.Tensor, *, size: int, seed: int = 0) -> ReducedMemory:
    """No reduction (ablation): a seeded random sample of `size` raw patch vectors, weight 1."""
    n, d = z.shape[0], z.shape[1]
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)
    if flat.shape[0] > size:
        gen = torch.Generator().manual_seed(seed)
        flat = flat[torch.randperm(flat.shape[0], generator=gen)[:size]]
    return ReducedMemory(vectors=flat.contiguous(), weights=torch.ones(flat.shape[0]), n_images=n)


Reducer = Callable[..., ReducedMemory]
REDUCERS: dict[str, Reducer] = {
    "position_average": position_average,
    "kmeans": kmeans_reduce,
    "coreset": coreset_reduce,
    "none": no_reduce,
}
