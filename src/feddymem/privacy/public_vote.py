"""The public vote: an upload made only of public images' patch vectors, chosen by a
differentially private vote of the site's own images (docs/privacy.md, section 3).

A coreset keeps exact patch vectors of the site's images, and k-means centres or noisy vectors
stay near them, so an image the site trained on sits closer to its upload than an image it did
not (the membership attack of `feddymem audit`). Here the site sends none of its own vectors:

1. **Codebook** (public data only): the public images' vectors z(x_pub), made by the same G_k,
   are clustered by seeded k-means into K cells (`vote_cells`). The candidate memory is the
   configured memory-reduce of those public vectors (`client_memory_size` items); each item
   belongs to the cell of its nearest centre.
2. **Vote**: training image i marks the set S_i of cells its patch vectors fall in and casts
   v_i = 1[S_i] / sqrt(|S_i|), a vector of L2 norm 1. The site forms the histogram
   V = sum_i v_i + N(0, sigma^2 I_K), sigma = `vote_noise`.
3. **Release**: the candidate items of every cell with V_c > tau, tau = sigma z_{1 - 1/K} (a cell
   no image voted for passes with probability 1/K, one such cell expected); if none passes, the
   cell of the largest V. The items' weights are their public counts and the upload's image
   count is the public images', so nothing else of the site's data travels.

Privacy: adding or removing one training image moves sum_i v_i by one v_i, of norm 1, so V is
the Gaussian mechanism with noise multiplier sigma, and the upload is post-processing of V and
public data. Over R + 1 releases (a fresh vote each round) the (epsilon, delta) composes by RDP
(`dp.epsilon_for`). This holds when G_k does not depend on the site's images (a fixed generator,
or the memory built once in round 0); a G_k trained on them carries them into the public
vectors' embedding, which the vote does not bound (`dp.privacy_guarantee` says so).

The detector pays in coverage: a normal pattern of the site that the public images lack, or
that too few of its images show for its cell to pass the vote, has no near item in the memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import torch

from feddymem.detect.features import patch_vectors
from feddymem.detect.knn import NearestNeighbors
from feddymem.method.kmeans import weighted_kmeans
from feddymem.method.reduce import ReducedMemory, reduce_memory
from feddymem.privacy.defences import defence_seed

if TYPE_CHECKING:
    from feddymem.config import FedDyMemConfig

log = logging.getLogger(__name__)

VOTE_STREAM = 2
"""The noise stream of the vote (`defences.defence_seed`; 0 is `upload_noise`'s)."""


@dataclass(frozen=True)
class PublicCodebook:
    """The public side of the vote: `centres` (K, d) of the cells, the candidate memory `items`
    (the memory-reduce of the public vectors) and `item_cell` (M,), each item's cell."""

    centres: torch.Tensor
    items: ReducedMemory
    item_cell: torch.Tensor


def public_codebook(public_z: torch.Tensor, *, config: FedDyMemConfig, seed: int) -> PublicCodebook:
    """The codebook of the public images' patch vectors `public_z` (N, d, H, W) under
    `config` (`vote_cells`, `kmeans_iterations`, the memory-reduce and its size), seeded."""
    flat = patch_vectors(public_z.float()).contiguous()
    centres, _ = weighted_kmeans(
        flat, None, k=config.vote_cells, seed=seed, iterations=config.kmeans_iterations
    )
    items = reduce_memory(public_z, config=config, seed=seed)
    return PublicCodebook(centres=centres, items=items, item_cell=_cells(items.vectors, centres))


def _cells(vectors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,) the nearest centre of each of `vectors` (N, d)."""
    _, nearest = NearestNeighbors(centres, backend="faiss").search(vectors.float().contiguous(), 1)
    return nearest[:, 0]


def image_votes(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """sum_i v_i (K,) float64: image i of z (n, d, H, W) casts 1/sqrt(|S_i|) on each cell of
    S_i, the cells its patch vectors fall in (each image's vote has L2 norm 1)."""
    n = z.shape[0]
    cells = _cells(patch_vectors(z.float()), centres).view(n, -1)
    marked = torch.zeros(n, centres.shape[0], dtype=torch.float64)
    marked.scatter_(1, cells, 1.0)
    return (marked / marked.sum(dim=1, keepdim=True).sqrt()).sum(dim=0)


def vote_threshold(noise: float, cells: int) -> float:
    """tau = sigma z_{1 - 1/K}: a cell with no vote passes with probability 1/K."""
    return noise * NormalDist().inv_cdf(1.0 - 1.0 / cells)


def noisy_selection(
    votes: torch.Tensor, *, noise: float, seed: int, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """(K,) bool: the cells whose noisy vote V = votes + N(0, noise^2) passes `vote_threshold`
    (the largest V if none does), among the `allowed` cells (a public mask; default all)."""
    gen = torch.Generator().manual_seed(seed)
    noisy = votes + noise * torch.randn(votes.shape, generator=gen, dtype=torch.float64)
    if allowed is not None:
        noisy = noisy.masked_fill(~allowed, -torch.inf)
    chosen = noisy > vote_threshold(noise, votes.shape[0])
    if not bool(chosen.any()):
        chosen = noisy == noisy.max()
    return chosen


def public_vote_memory(
    z: torch.Tensor,
    codebook: PublicCodebook,
    *,
    config: FedDyMemConfig,
    round_idx: int,
    noise_key: int = 0,
) -> ReducedMemory:
    """M_k of round `round_idx`: the codebook's items in the cells the site's images z
    (n_k, d, H, W) vote for, with the vote's noise seeded by (config.seed, round_idx) and the
    site's secret `noise_key` (`defences.defence_seed`)."""
    votes = image_votes(z, codebook.centres)
    # cells without a candidate item (public knowledge) take no part
    has_items = torch.zeros(votes.shape[0], dtype=torch.bool)
    has_items[codebook.item_cell] = True
    chosen = noisy_selection(
        votes,
        noise=config.vote_noise,
        seed=defence_seed(config.seed, round_idx, VOTE_STREAM, key=noise_key),
        allowed=has_items,
    )
    keep = chosen[codebook.item_cell]
    items = codebook.items
    log.info(
        "public vote: %d of %d cells chosen, %d of %d public items uploaded",
        int(chosen.sum()),
        chosen.numel(),
        int(keep.sum()),
        keep.numel(),
    )
    return ReducedMemory(
        vectors=items.vectors[keep].contiguous(),
        weights=items.weights[keep].contiguous(),
        n_images=items.n_images,
    )
