"""Heuristic upload defences against membership inference (no formal guarantee; docs/privacy.md).

A coreset keeps exact patch vectors of the site's images, so a training image has patches at
distance zero from the upload. Two options move the released items off the training vectors:

* `upload_noise` s: every patch vector gets Gaussian noise before memory-reduce, per
  coordinate std s * spread / sqrt(d), i.e. a noise vector of norm about s * spread, where
  spread = sqrt(sum of the per-coordinate variances) of the site's own vectors. A coreset of
  the noisy vectors is "a coreset built on noisy features".
* `upload_margin` m: released items nearer than m * spread to any single training patch vector
  are dropped (an item that is one patch in disguise: a singleton k-means centre, an unlucky
  noise draw). At least one item, the farthest, is always kept.

Both are seeded by the config's seed and the round, in streams of their own, and at a
deployed site by a key of its own as well (`defence_seed`).
"""

from __future__ import annotations

import logging
import math

import torch

from feddymem.detect.knn import NearestNeighbors
from feddymem.method.reduce import ReducedMemory
from feddymem.method.seeds import stream_seed

log = logging.getLogger(__name__)


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def vector_spread(z: torch.Tensor) -> float:
    """sqrt of the summed per-coordinate variances of patch maps z (N, d, H, W): the RMS
    distance of a patch vector from their mean."""
    return float(_flat(z).var(dim=0).sum().sqrt())


def defence_seed(seed: int, round_idx: int, stream: int, *, key: int = 0) -> int:
    """Seed of a defence's randomness in round `round_idx`, apart from every other stream.

    `key` (> 0): a secret the site holds (`federation.client_base.site_noise_key`), so that
    whoever knows the config's seed (the server sends it) cannot redraw the noise; 0 keeps the
    seed a function of the config alone (the audit, benchmarks, tests)."""
    return stream_seed(seed, round_idx, 0xDEF, stream, key=key)


def noisy_features(
    z: torch.Tensor, *, relative_std: float, seed: int, spread: float | None = None
) -> torch.Tensor:
    """z (N, d, ...) plus Gaussian noise of norm about `relative_std` * `spread` per vector
    (default spread: vector_spread(z), for z (N, d, H, W))."""
    if relative_std <= 0:
        return z
    spread = vector_spread(z) if spread is None else spread
    std = relative_std * spread / math.sqrt(z.shape[1])
    gen = torch.Generator().manual_seed(seed)
    return z.float() + std * torch.randn(z.shape, generator=gen)


def drop_near_copies(
    memory: ReducedMemory, z: torch.Tensor, *, relative_margin: float
) -> ReducedMemory:
    """`memory` without the items nearer than `relative_margin` * vector_spread(z) to any patch
    vector of z (N, d, H, W); the farthest item stays if all would go."""
    if relative_margin <= 0:
        return memory
    margin = relative_margin * vector_spread(z)
    dist, _ = NearestNeighbors(_flat(z), backend="torch").search(memory.vectors.float(), 1)
    keep = dist[:, 0] >= margin
    if not bool(keep.any()):
        keep = dist[:, 0] == dist[:, 0].max()
    log.info(
        "upload margin %.3g: %d of %d items kept", margin, int(keep.sum()), memory.vectors.shape[0]
    )
    return ReducedMemory(
        vectors=memory.vectors[keep].contiguous(),
        weights=memory.weights[keep].contiguous(),
        n_images=memory.n_images,
    )
