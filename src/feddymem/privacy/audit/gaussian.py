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
    regularised_precision,
    window_neighbours,
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
    window: int = 1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a site's moments of `features` (N, D, H, W) give whoever holds them, at the grid
    `positions` the attack queries (flat indices, Q): mean (Q, D) and regularised precision
    (Q, D, D). Each position's moments need only its own patches (with `window` > 1, those of
    its window x window square, `GaussianConfig.moment_window`), so the others are not needed.
    With `noise` (`GaussianConfig.moment_noise`), the patch vectors are noised first as a site
    noises them, once each, relative to the spread of all of `features`, seeded by `seed`."""
    d, h, w = features.shape[1:]
    square = window_neighbours((h, w), window)[positions]  # (Q, window^2)
    needed, where = torch.unique(square, return_inverse=True)
    picked = at_positions(features, needed)  # (N, D, U, 1)
    if noise > 0:
        picked = defences.noisy_features(
            picked, relative_std=noise, seed=seed, spread=defences.vector_spread(features)
        )
    # every vector of a position's square is one sample of its Gaussian: (N * window^2, D, Q, 1)
    samples = picked[:, :, where, 0].permute(0, 3, 1, 2).reshape(-1, d, len(positions), 1)
    moments = PatchMoments()
    moments.update(samples)
    mean, cov = moments.mean_covariance()
    return mean.float(), regularised_precision(cov, eps=eps).float()


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
    data: MembershipData,
    *,
    eps: float,
    noise: float = 0.0,
    window: int = 1,
    low_fraction: float = 0.1,
) -> dict[str, Any]:
    """Both attacks on the Gaussians of the members' moments (noised by `noise` and pooled over
    `window` as the site does); the shadows are the Gaussians of the public subsets the memory shadows are
    built from (`releases.shadow_subsets`), made the same way: the attacker knows the
    mechanism, not the draw."""
    n_in, d, h, w = data.members.shape
    candidates = at_positions(torch.cat([data.members, data.nonmembers]), data.positions)
    target = gaussian_statistic(
        candidates,
        *released_gaussians(
            data.members, data.positions, eps=eps, noise=noise, window=window, seed=data.seed
        ),
        low_fraction=low_fraction,
    )
    shadows = [
        gaussian_statistic(
            candidates,
            *released_gaussians(
                data.public[pick],
                data.positions,
                eps=eps,
                noise=noise,
                window=window,
                seed=data.seed + 1 + i,
            ),
            low_fraction=low_fraction,
        )
        for i, pick in enumerate(shadow_subsets(data, data.public.shape[0], n_in))
    ]
    result = attack_summaries(target, shadows, n_members=n_in)
    # what the site sends: its count, and per position the sum (D) and sum of outer products
    return {**result, "items": h * w, "floats_sent": 1 + h * w * (d + d * d)}


def gaussian_config(config: AuditConfig, *, noise: float = 0.0, window: int = 1) -> GaussianConfig:
    """fed-padim's detector settings for this audit: the [model] feature settings and seed
    (as `federation.fedpadim` takes them from a federation's model), the [fed_padim] eps,
    `noise` as the moment noise and `window` as the moment window."""
    assert config.fed_padim is not None
    model = from_dict(FedDyMemConfig, dict(config.model), where="[model]")
    return gaussian_config_like(
        model, eps=config.fed_padim.eps, moment_noise=noise, moment_window=window
    )


def row_name(noise: float, window: int) -> str:
    """A fed-padim row's name: its defences, if any."""
    parts = [f"window {window}"] if window > 1 else []
    parts += [f"moment noise {noise:g}"] if noise > 0 else []
    return ", ".join(["fed-padim", *parts])


def audit_fed_padim(
    config: AuditConfig, data: AuditData, membership: MembershipData
) -> list[dict[str, Any]]:
    """fed-padim's rows of the audit, one per [fed_padim] (window, noise) pair: membership
    inference on what the site sends, and the image AUROC of the PaDiM model those statistics
    make (fitted on the victim's images, its threshold share held out as fed-padim's sites
    do)."""
    assert config.fed_padim is not None
    rows = []
    pairs = [(w, v) for w in config.fed_padim.window for v in config.fed_padim.noise]
    for i, (window, noise) in enumerate(pairs):
        t0 = time.perf_counter()
        name = row_name(noise, window)
        cfg = gaussian_config(config, noise=noise, window=window)
        mia = fed_padim_membership(membership, eps=cfg.eps, noise=noise, window=window)
        metrics = GaussianDetector(cfg).fit(data.victim).evaluate(data.test)
        log.info(
            "fed-padim row %d/%d, %s: image AUROC %.4f; membership %s",
            i + 1,
            len(pairs),
            name,
            metrics.image_auroc,
            describe_attacks(mia),
        )
        rows.append(
            {
                "name": name,
                "eps": cfg.eps,
                "moment_noise": noise,
                "moment_window": window,
                "image_auroc": metrics.image_auroc,
                "membership": {RELEASE: mia},
                "wall_s": time.perf_counter() - t0,
            }
        )
    return rows
