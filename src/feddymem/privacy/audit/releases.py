"""Membership inference on everything a setting releases: the site's last upload M_k and the
server's M_g after the first and after the last round, each against its own shadow memories."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from feddymem.config import FedDyMemConfig
from feddymem.method.aggregate import aggregate_memories
from feddymem.method.client import build_upload
from feddymem.method.seeds import round_seed
from feddymem.privacy.audit.attack import embed
from feddymem.privacy.audit.membership import (
    Candidates,
    describe_attacks,
    flat_queries,
    membership_attacks,
)
from feddymem.privacy.public_vote import PublicCodebook, public_codebook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """One released memory: `vectors` (M, d), the G_k copy that built the upload behind it
    (None without a generator), the round of that upload, and the server round t that
    aggregated it (None for the upload itself)."""

    name: str
    vectors: torch.Tensor
    generator: nn.Module | None
    upload_round: int
    aggregated: int | None = None


@dataclass(frozen=True)
class MembershipData:
    """p(x) of the candidates and of the attacker's public images, (N, D, H, W) each, the grid
    positions queried per image, the number of shadow memories, and the images among which a
    whole-image reconstruction must pick out its own."""

    members: torch.Tensor
    nonmembers: torch.Tensor
    public: torch.Tensor
    positions: torch.Tensor
    shadows: int
    seed: int
    image_pool: torch.Tensor  # (N, 3, H_in, W_in) the victim's and held-out images


def shadow_subsets(data: MembershipData, n_public: int, n_images: int) -> list[torch.Tensor]:
    """Indices of the `data.shadows` random subsets of `n_images` of the attacker's `n_public`
    public images that the shadow releases are built from (seeded by `data.seed`)."""
    return [
        torch.randperm(n_public, generator=torch.Generator().manual_seed(data.seed * 7_919 + i))[
            :n_images
        ]
        for i in range(data.shadows)
    ]


def _shadow_memories(
    release: Release,
    cfg: FedDyMemConfig,
    public_z: torch.Tensor,
    *,
    n_images: int,
    data: MembershipData,
    codebook: PublicCodebook | None,
) -> list[torch.Tensor]:
    """The attacker's counterparts of `release`: the same pipeline (reduce, noise, defences,
    server k-means, the public vote over `codebook`) run on random subsets of `n_images` public
    images."""
    out = []
    for i, pick in enumerate(shadow_subsets(data, public_z.shape[0], n_images)):
        shadow_cfg = dataclasses.replace(cfg, seed=cfg.seed + 50_021 * (i + 1))
        upload = build_upload(
            public_z[pick], config=shadow_cfg, round_idx=release.upload_round, public=codebook
        )
        if release.aggregated is None:
            out.append(upload.vectors)
            continue
        out.append(
            aggregate_memories(
                [upload],
                num_centers=cfg.global_memory_size,
                method=cfg.server_aggregation,
                seed=shadow_cfg.seed * 1_000 + release.aggregated,
                iterations=cfg.kmeans_iterations,
            )
        )
    return out


def release_codebook(
    cfg: FedDyMemConfig,
    generator: nn.Module | None,
    public_features: torch.Tensor,
    *,
    upload_round: int,
) -> PublicCodebook | None:
    """With `public_vote`, the codebook the site built in `upload_round` from the public images'
    p(x) (N, D, H, W) and its G_k, which the attacker, holding the same public images and G_k,
    rebuilds exactly (from float16 features, as the site caches them); else None."""
    if not cfg.public_vote:
        return None
    public_z = embed(generator, public_features.half())
    return public_codebook(public_z, config=cfg, seed=round_seed(cfg.seed, upload_round))


def _same(a: Release, b: Release) -> bool:
    """Whether two releases are one memory attacked the same way (no generator, same items)."""
    return (
        a.generator is None
        and b.generator is None
        and a.vectors.shape == b.vectors.shape
        and bool(torch.equal(a.vectors, b.vectors))
    )


def release_membership(
    releases: list[Release], cfg: FedDyMemConfig, data: MembershipData
) -> dict[str, Any]:
    """Distance and calibrated attacks on every release; per release AUC and TPR at low FPR."""
    results: dict[str, Any] = {}
    n_images = data.members.shape[0]
    # the public vote's codebook per (G_k, round) that built an upload: releases of one upload
    # (an upload built once and re-sent, M_k and the M_g made from it) share it
    codebooks: dict[tuple[int, int], PublicCodebook | None] = {}
    for i, release in enumerate(releases):
        same = next((r for r in releases[:i] if _same(r, release)), None)
        if same is not None:  # e.g. a raw bank: M_g is the bank itself when k-means keeps all
            results[release.name] = {**results[same.name], "same_as": same.name}
            continue
        t0 = time.perf_counter()
        g = release.generator
        candidates = Candidates(
            members=flat_queries(embed(g, data.members), data.positions),
            nonmembers=flat_queries(embed(g, data.nonmembers), data.positions),
        )
        built = (id(g), release.upload_round)
        if built not in codebooks:
            codebooks[built] = release_codebook(
                cfg, g, data.public, upload_round=release.upload_round
            )
        shadows = _shadow_memories(
            release,
            cfg,
            embed(g, data.public),
            n_images=n_images,
            data=data,
            codebook=codebooks[built],
        )
        results[release.name] = {
            **membership_attacks(release.vectors, candidates, shadows=shadows),
            "items": int(release.vectors.shape[0]),
            "wall_s": time.perf_counter() - t0,
        }
        log.info(
            "  membership on %s: %s (%.0f s)",
            release.name,
            describe_attacks(results[release.name]),
            results[release.name]["wall_s"],
        )
    return results
