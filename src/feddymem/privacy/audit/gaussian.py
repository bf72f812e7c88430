"""fed-padim's upload under the audit's membership attacks.

A fed-padim site sends, per grid position, its image count, the sum of its patch features and
the sum of their outer products. From these the server (and, once pooled, every site) has a
mean and a covariance per position: the Gaussians PaDiM scores with. Those moments are what a
member shaped, so the attack reads a candidate's patches by their Mahalanobis distances to the
released Gaussians (the statistic of `membership.image_statistic`: members, having been in the
sums, sit nearer), alone (``distance``) and against shadow Gaussians from random subsets of the
attacker's public images (``calibrated``), as for every other upload.

The released mean per position is an average image of the site's cells; what it gives away by
inversion is the audit's "position average (fixed G_k)" setting, which sends exactly that mean.
The cost side is PaDiM's image AUROC on the site's test split with the same features.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from feddymem.config import FeatureConfig, FedDyMemConfig, from_dict, to_dict
from feddymem.detect.gaussian import (
    GaussianConfig,
    GaussianDetector,
    PatchMoments,
    mahalanobis,
    regularised_precision,
)
from feddymem.privacy.audit.config import AuditConfig
from feddymem.privacy.audit.data import AuditData
from feddymem.privacy.audit.membership import (
    attack_summaries,
    describe_attacks,
    image_statistic,
)
from feddymem.privacy.audit.releases import MembershipData

log = logging.getLogger(__name__)

RELEASE = "statistics (sent once; pooled back)"


def released_gaussians(
    features: torch.Tensor, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What a site's moments of `features` (N, D, H, W) give whoever holds them: the mean
    (P, D) and regularised precision (P, D, D) per position, and the floats sent."""
    moments = PatchMoments()
    moments.update(features)
    mean, cov = moments.mean_covariance()
    assert moments.total is not None and moments.outer is not None
    sent = 1 + moments.total.numel() + moments.outer.numel()
    return mean.float(), regularised_precision(cov, eps=eps).float(), sent


def gaussian_statistic(
    features: torch.Tensor,
    mean: torch.Tensor,
    precision: torch.Tensor,
    positions: torch.Tensor,
    *,
    low_fraction: float = 0.1,
) -> torch.Tensor:
    """Per image (N,): the membership statistic of its patches at `positions` (flat grid
    indices), each measured by the Mahalanobis distance to its own position's Gaussian."""
    n, d = features.shape[:2]
    picked = features.reshape(n, d, -1)[:, :, positions].unsqueeze(3)  # (N, d, Q, 1)
    dist = mahalanobis(picked, mean[positions], precision[positions])  # (N, Q, 1)
    return image_statistic(dist.flatten(1), low_fraction=low_fraction)


def fed_padim_membership(
    data: MembershipData, *, eps: float, low_fraction: float = 0.1
) -> dict[str, Any]:
    """Both attacks on the Gaussians of the members' moments; the shadows are the Gaussians
    of random public subsets of the members' size (seeded as the memory shadows)."""
    n_in = data.members.shape[0]
    candidates = torch.cat([data.members, data.nonmembers])
    mean, precision, sent = released_gaussians(data.members, eps=eps)
    target = gaussian_statistic(
        candidates, mean, precision, data.positions, low_fraction=low_fraction
    )
    shadows = []
    for i in range(data.shadows):
        gen = torch.Generator().manual_seed(data.seed * 7_919 + i)
        pick = torch.randperm(data.public.shape[0], generator=gen)[:n_in]
        s_mean, s_precision, _ = released_gaussians(data.public[pick], eps=eps)
        shadows.append(
            gaussian_statistic(
                candidates, s_mean, s_precision, data.positions, low_fraction=low_fraction
            )
        )
    result = attack_summaries(target, shadows, n_members=n_in)
    return {**result, "items": int(mean.shape[0]), "floats_sent": int(sent)}


def gaussian_config(config: AuditConfig) -> GaussianConfig:
    """fed-padim's detector settings for this audit: the [model] feature settings and seed
    (as `federation.fedpadim` takes them from a federation's model), the [fed_padim] eps."""
    assert config.fed_padim is not None
    model = from_dict(FedDyMemConfig, dict(config.model), where="[model]")
    shared = set(FeatureConfig.__dataclass_fields__)
    values = {k: v for k, v in to_dict(model).items() if k in shared}
    return from_dict(
        GaussianConfig,
        {**values, "seed": model.seed, "eps": config.fed_padim.eps},
        where="[fed_padim]",
    )


def audit_fed_padim(
    config: AuditConfig, data: AuditData, membership: MembershipData
) -> dict[str, Any]:
    """fed-padim's row of the audit: membership inference on what the site sends, and the
    image AUROC of the PaDiM model those statistics make (fitted on the victim's images, its
    threshold share held out as fed-padim's sites do)."""
    t0 = time.perf_counter()
    cfg = gaussian_config(config)
    mia = fed_padim_membership(membership, eps=cfg.eps)
    detector = GaussianDetector(cfg).fit(data.victim)
    metrics = detector.evaluate(data.test)
    log.info(
        "fed-padim: image AUROC %.4f; membership %s", metrics.image_auroc, describe_attacks(mia)
    )
    return {
        "name": "fed-padim",
        "eps": cfg.eps,
        "image_auroc": metrics.image_auroc,
        "membership": {RELEASE: mia},
        "wall_s": time.perf_counter() - t0,
    }
