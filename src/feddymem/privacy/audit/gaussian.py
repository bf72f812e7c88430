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

from feddymem.config import FedDyMemConfig, from_dict
from feddymem.detect.gaussian import (
    GaussianConfig,
    GaussianDetector,
    PatchMoments,
    gaussian_config_like,
    mahalanobis,
)
from feddymem.privacy import defences
from feddymem.privacy.audit.config import AuditConfig
from feddymem.privacy.audit.data import AuditData
from feddymem.privacy.audit.membership import (
    attack_summaries,
    describe_attacks,
    image_statistic,
)
from feddymem.privacy.audit.releases import MembershipData, shadow_subsets

log = logging.getLogger(__name__)

RELEASE = "statistics (sent once; pooled back)"


def released_gaussians(
    features: torch.Tensor,
    positions: torch.Tensor,
    *,
    eps: float,
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a site's moments of `features` (N, D, H, W) give whoever holds them, at the grid
    `positions` the attack queries (flat indices, Q): mean (Q, D) and regularised precision
    (Q, D, D). The moments of each position are independent, so the others are not needed.
    With `noise` (`GaussianConfig.moment_noise`), the patch vectors are noised first as a site
    noises them, relative to the spread of all of `features`, seeded by `seed`."""
    picked = at_positions(features, positions)
    if noise > 0:
        picked = defences.noisy_features(
            picked, relative_std=noise, seed=seed, spread=defences.vector_spread(features)
        )
    moments = PatchMoments()
    moments.update(picked)
    return moments.gaussians(eps=eps)


def at_positions(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(N, D, H, W) -> (N, D, Q, 1): the patch features at the flat grid `positions`."""
    n, d = features.shape[:2]
    return features.reshape(n, d, -1)[:, :, positions].unsqueeze(3)


def gaussian_statistic(
    picked: torch.Tensor,
    mean: torch.Tensor,
    precision: torch.Tensor,
    *,
    low_fraction: float = 0.1,
) -> torch.Tensor:
    """Per image (N,): the membership statistic of its patches `picked` (N, D, Q, 1), each
    measured by the Mahalanobis distance to its own position's Gaussian (Q Gaussians)."""
    dist = mahalanobis(picked, mean, precision)  # (N, Q, 1)
    return image_statistic(dist.flatten(1), low_fraction=low_fraction)


def fed_padim_membership(
    data: MembershipData, *, eps: float, noise: float = 0.0, low_fraction: float = 0.1
) -> dict[str, Any]:
    """Both attacks on the Gaussians of the members' moments (noised by `noise` as the site
    noises them); the shadows are the Gaussians of the public subsets the memory shadows are
    built from (`releases.shadow_subsets`), noised the same way: the attacker knows the
    mechanism, not the draw."""
    n_in, d, h, w = data.members.shape
    candidates = at_positions(torch.cat([data.members, data.nonmembers]), data.positions)
    target = gaussian_statistic(
        candidates,
        *released_gaussians(data.members, data.positions, eps=eps, noise=noise, seed=data.seed),
        low_fraction=low_fraction,
    )
    shadows = [
        gaussian_statistic(
            candidates,
            *released_gaussians(
                data.public[pick], data.positions, eps=eps, noise=noise, seed=data.seed + 1 + i
            ),
            low_fraction=low_fraction,
        )
        for i, pick in enumerate(shadow_subsets(data, data.public.shape[0], n_in))
    ]
    result = attack_summaries(target, shadows, n_members=n_in)
    # what the site sends: its count, and per position the sum (D) and sum of outer products
    return {**result, "items": h * w, "floats_sent": 1 + h * w * (d + d * d)}


def gaussian_config(config: AuditConfig, *, noise: float = 0.0) -> GaussianConfig:
    """fed-padim's detector settings for this audit: the [model] feature settings and seed
    (as `federation.fedpadim` takes them from a federation's model), the [fed_padim] eps, and
    `noise` as the moment noise."""
    assert config.fed_padim is not None
    model = from_dict(FedDyMemConfig, dict(config.model), where="[model]")
    # resized, as fed-padim's sites (`fedpadim.server_app.gaussian_config`)
    return gaussian_config_like(model, eps=config.fed_padim.eps, moment_noise=noise, tile="off")


def audit_fed_padim(
    config: AuditConfig, data: AuditData, membership: MembershipData
) -> list[dict[str, Any]]:
    """fed-padim's rows of the audit, one per [fed_padim] noise level: membership inference
    on what the site sends, and the image AUROC of the PaDiM model those (noised) statistics
    make (fitted on the victim's images, its threshold share held out as fed-padim's sites
    do)."""
    assert config.fed_padim is not None
    rows = []
    for noise in config.fed_padim.noise:
        t0 = time.perf_counter()
        cfg = gaussian_config(config, noise=noise)
        mia = fed_padim_membership(membership, eps=cfg.eps, noise=noise)
        metrics = GaussianDetector(cfg).fit(data.victim).evaluate(data.test)
        log.info(
            "fed-padim, moment noise %g: image AUROC %.4f; membership %s",
            noise,
            metrics.image_auroc,
            describe_attacks(mia),
        )
        rows.append(
            {
                "name": "fed-padim" if noise == 0 else f"fed-padim, moment noise {noise:g}",
                "eps": cfg.eps,
                "moment_noise": noise,
                "image_auroc": metrics.image_auroc,
                "membership": {RELEASE: mia},
                "wall_s": time.perf_counter() - t0,
            }
        )
    return rows
