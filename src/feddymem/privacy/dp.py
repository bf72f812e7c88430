"""Differential privacy of the uploaded memory M_k: clipping, the Gaussian mechanism, accounting.

What is protected, and how (docs/privacy.md has the derivation):

* **Neighbouring relation**: two training sets of one client are neighbours when one is the
  other with one image added or removed (n_k changes by one). Each image contributes one
  patch vector z_ij per grid position j = 1..H*W.
* **Released statistic** (memory-reduce = ``position_average``, the paper's weighted average):
  every patch vector is clipped to L2 norm C, ``clip(v) = v * min(1, C / |v|)``; the client
  computes f(D) = (S, beta * n_k) with S_j = sum_i clip(z_ij) (H*W x d) and beta = COUNT_SCALE *
  Delta_S. Adding or removing an image moves S by at most Delta_S = C * sqrt(H*W) (one clipped
  vector per position) and beta * n_k by beta, so the L2 sensitivity of f is
  Delta = Delta_S * sqrt(1 + COUNT_SCALE^2).
* **Mechanism**: f(D) + N(0, (sigma * Delta)^2 I), sigma the noise multiplier. The upload is
  post-processing of that noisy pair: M_k = S~ / n~ per position, the noisy count
  n~ = (beta n_k)~ / beta as n_k and as every item's weight. The exact n_k is never uploaded.
* **Accounting**: every release of a fresh memory from the same data is one more Gaussian
  mechanism; releases compose by Renyi DP (opacus's RDP accountant, converted to
  (epsilon, delta) by Balle et al. 2020). With dynamic memory a client releases R + 1 memories
  over R rounds (round 0 included); with ``dynamic_memory = False`` it releases one and re-sends
  it.

Where no formal guarantee holds (said so by :func:`privacy_guarantee`, never hidden):

* memory-reduce ``kmeans`` or ``none``: a centre's or a sampled vector's dependence on one image
  is not bounded (assignments move, sampling shifts); the option then clips every patch vector,
  reduces, and adds N(0, (sigma C)^2) per coordinate of every released vector: a heuristic;
* a generator G_k trained on the client's own data (``generator`` and ``metric_loss`` on,
  ``local_epochs > 0``): z = G_k(p(x)) then depends on every image through G_k's weights, which
  the per-image clipping does not bound. The guarantee covers a fixed (untrained) G_k only.

Noise is seeded per round for reproducibility. The server sends the config's seed, and anyone
who knows a noise's seed can subtract the noise, so a deployed site mixes in a key of its own
that never travels (`federation.client_base.site_noise_key`, one per run in the site's state
folder); simulations, the audit and the benchmarks seed noise by the config alone.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from feddymem.method.kmeans import weighted_kmeans
from feddymem.method.reduce import REDUCERS, ReducedMemory
from feddymem.method.seeds import round_seed, stream_seed

if TYPE_CHECKING:
    from feddymem.config import FedDyMemConfig

log = logging.getLogger(__name__)

COUNT_SCALE = 0.25
"""beta / Delta_S: the weight of the count n_k in the released pair f(D) = (S, beta n_k).

The count's noise, in images, is sigma * Delta / beta = 4.12 sigma; the sums pay a factor
sqrt(1 + 0.25^2) = 1.03 in noise for it.
"""

RDP_ORDERS: tuple[float, ...] = tuple(
    float(a)
    for a in np.concatenate(
        [1.0 + np.arange(1, 100) / 100.0, np.arange(2.0, 64.0, 0.5), np.geomspace(64.0, 1e5, 60)]
    )
)
"""Renyi orders alpha the accountant optimises over (wide, so no sigma hits an end)."""


# --- clipping and sensitivity -------------------------------------------------------------------
def clip_vectors(vectors: torch.Tensor, clip_norm: float, *, dim: int = 1) -> torch.Tensor:
    """Scale every vector along `dim` to L2 norm at most C: v * min(1, C / |v|).

    Works on patch maps z (N, d, H, W) (dim=1) and on memories (M, d) (dim=1).
    """
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    x = vectors.float()
    norms = x.norm(dim=dim, keepdim=True)
    scale = torch.clamp(clip_norm / norms.clamp_min(1e-12), max=1.0)
    return x * scale


def sum_sensitivity(num_positions: int, clip_norm: float) -> float:
    """Delta_S = C sqrt(H*W): the L2 change of the per-position sums S when one image is added
    or removed (it adds or removes one clipped vector of norm <= C at each of H*W positions)."""
    return clip_norm * math.sqrt(num_positions)


def release_sensitivity(num_positions: int, clip_norm: float) -> float:
    """Delta = Delta_S sqrt(1 + COUNT_SCALE^2): L2 sensitivity of f(D) = (S, beta n_k)."""
    return sum_sensitivity(num_positions, clip_norm) * math.sqrt(1.0 + COUNT_SCALE**2)


def position_statistic(z: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, float]:
    """The pre-noise statistic f(D) of a client's patch maps z (n_k, d, H, W).

    Returns (S, beta * n_k): S (H*W, d) float32, the per-position sums of the clipped vectors
    (row j = position j in row-major order, as `position_average`), and the scaled count.
    """
    n, d, h, w = z.shape
    sums = clip_vectors(z, clip_norm).sum(dim=0).permute(1, 2, 0).reshape(h * w, d)
    beta = COUNT_SCALE * sum_sensitivity(h * w, clip_norm)
    return sums, beta * n


def noise_seed(seed: int, round_idx: int, *, key: int = 0) -> int:
    """The seed of round `round_idx`'s noise, a stream of its own (not the k-means seed); with
    the site's secret `key` (> 0) mixed in, as `defences.defence_seed` does."""
    return stream_seed(seed, round_idx, 0xD1FF, key=key)


# --- the mechanisms ------------------------------------------------------------------------------
def gaussian_position_average(
    z: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    seed: int,
    gamma_c: int = 1,
    kmeans_seed: int = 0,
    iterations: int = 20,
) -> ReducedMemory:
    """Memory-reduce 'position_average' under the Gaussian mechanism (the formal path).

    z (n_k, d, H, W) -> M_k (H*W, d): noisy sums over noisy count, per position, with noise
    N(0, (sigma Delta)^2) on every coordinate of (S, beta n_k) (module docstring). The count
    released as `n_images` and as every item's weight is the noisy one, rounded, at least 1.
    With gamma_c > 1 a local weighted k-means (post-processing) shrinks M_k to H*W / gamma_c.
    """
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    _, _, h, w = z.shape
    sums, scaled_count = position_statistic(z, clip_norm)
    beta = COUNT_SCALE * sum_sensitivity(h * w, clip_norm)
    std = noise_multiplier * release_sensitivity(h * w, clip_norm)
    gen = torch.Generator().manual_seed(seed)
    if std > 0:
        sums = sums + std * torch.randn(sums.shape, generator=gen)
        scaled_count = scaled_count + std * float(torch.randn((), generator=gen))
    count = max(1.0, scaled_count / beta)
    vectors = sums / count
    weights = torch.full((h * w,), float(round(count)))
    if gamma_c > 1:
        vectors, weights = weighted_kmeans(
            vectors, weights, k=max(1, (h * w) // gamma_c), seed=kmeans_seed, iterations=iterations
        )
    return ReducedMemory(
        vectors=vectors.contiguous(), weights=weights, n_images=max(1, round(count))
    )


def noisy_vectors(
    memory: ReducedMemory, *, clip_norm: float, noise_multiplier: float, seed: int
) -> ReducedMemory:
    """Heuristic (no formal guarantee): clip every released vector to C, add N(0, (sigma C)^2).

    For memories whose per-image sensitivity is unbounded (k-means centres, sampled raw
    vectors); sigma C is the noise a single clipped vector would need, not a proven bound.
    """
    vectors = clip_vectors(memory.vectors, clip_norm)
    if noise_multiplier > 0:
        gen = torch.Generator().manual_seed(seed)
        vectors = vectors + noise_multiplier * clip_norm * torch.randn(vectors.shape, generator=gen)
    return ReducedMemory(
        vectors=vectors.contiguous(), weights=memory.weights, n_images=memory.n_images
    )


def private_memory(
    z: torch.Tensor, *, config: FedDyMemConfig, round_idx: int, noise_key: int = 0
) -> ReducedMemory:
    """M_k of round `round_idx` with the DP option of `config` (dp_clip_norm must be set).

    z (n_k, d, H, W) are the patch vectors z(x) = G_k(p(x)). 'position_average' takes the
    formal Gaussian mechanism; 'kmeans', 'coreset' and 'none' clip the patch vectors, reduce,
    then add the heuristic noise of :func:`noisy_vectors`. Noise is seeded by (config.seed, round_idx).
    """
    clip = config.dp_clip_norm
    if clip is None:
        raise ValueError("private_memory needs config.dp_clip_norm")
    sigma = config.dp_noise_multiplier
    base_seed = round_seed(config.seed, round_idx)  # the reducers' seed in build_upload
    seed = noise_seed(config.seed, round_idx, key=noise_key)
    if config.memory_reduce == "position_average":
        return gaussian_position_average(
            z,
            clip_norm=clip,
            noise_multiplier=sigma,
            seed=seed,
            gamma_c=config.gamma_c,
            kmeans_seed=base_seed,
            iterations=config.kmeans_iterations,
        )
    clipped = clip_vectors(z, clip)
    if config.memory_reduce == "kmeans":
        reduced = REDUCERS["kmeans"](
            clipped,
            size=config.client_memory_size,
            seed=base_seed,
            iterations=config.kmeans_iterations,
        )
    elif config.memory_reduce == "coreset":
        reduced = REDUCERS["coreset"](clipped, size=config.client_memory_size, seed=base_seed)
    else:
        reduced = REDUCERS["none"](clipped, size=config.client_memory_size, seed=base_seed)
    return noisy_vectors(reduced, clip_norm=clip, noise_multiplier=sigma, seed=seed)


# --- accounting ----------------------------------------------------------------------------------
def _rdp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = list(RDP_ORDERS)
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=releases, orders=orders)
    with warnings.catch_warnings():
        # An optimum at an end of RDP_ORDERS (only for sigma << 0.1, epsilon in the hundreds)
        # still gives a valid upper bound; opacus warns that it may be loose.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return max(0.0, float(eps))


def _check_accounting(releases: int, delta: float) -> None:
    if releases < 0:
        raise ValueError(f"releases must be >= 0, got {releases}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def epsilon_for(noise_multiplier: float, releases: int, delta: float) -> float:
    """epsilon of `releases` Gaussian mechanisms with noise multiplier sigma, at `delta`.

    Each release is f(D) + N(0, (sigma Delta)^2 I) for the same data; their composition is
    accounted by Renyi DP (opacus RDP accountant, sampling rate 1) and converted to
    (epsilon, delta). Returns inf for sigma = 0 and 0 for no release.
    """
    _check_accounting(releases, delta)
    if releases == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return _rdp_epsilon(noise_multiplier, releases, delta)


def noise_for_epsilon(
    epsilon: float, releases: int, delta: float, *, tolerance: float = 1e-4
) -> float:
    """The smallest noise multiplier sigma with epsilon_for(sigma, releases, delta) <= epsilon.

    Bisection in log sigma (epsilon_for decreases in sigma), to relative `tolerance`.
    """
    _check_accounting(releases, delta)
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if releases == 0:
        return 0.0
    lo, hi = 1e-3, 1e5
    if epsilon_for(lo, releases, delta) <= epsilon:
        return lo
    if epsilon_for(hi, releases, delta) > epsilon:
        raise ValueError(f"epsilon {epsilon} is out of reach (sigma > {hi:g})")
    while hi / lo > 1.0 + tolerance:
        mid = math.sqrt(lo * hi)
        if epsilon_for(mid, releases, delta) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The highest TPR any membership test can reach at false-positive rate `fpr` against an
    (epsilon, delta)-DP release: min(e^eps fpr + delta, 1 - e^-eps (1 - delta - fpr)), within
    [0, 1] (the hypothesis-testing view of DP, Kairouz et al. 2015)."""
    if math.isinf(epsilon):
        return 1.0
    tpr = min(math.exp(epsilon) * fpr + delta, 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr))
    return min(1.0, max(0.0, tpr))


def auc_bound(epsilon: float, delta: float) -> float:
    """The highest ROC AUC any membership test can reach against an (epsilon, delta)-DP release:
    the area under `tpr_bound` over every FPR (piecewise linear; integrated on a fine grid)."""
    if math.isinf(epsilon):
        return 1.0
    fpr = np.linspace(0.0, 1.0, 200_001)
    e = math.exp(epsilon)
    tpr = np.clip(np.minimum(e * fpr + delta, 1.0 - (1.0 - delta - fpr) / e), 0.0, 1.0)
    return float(np.trapezoid(tpr, fpr))


def embeds_through_trained_generator(config: FedDyMemConfig, *, rounds: int) -> bool:
    """Whether an upload built after `rounds` rounds passes through a G_k trained on the site's
    images: a memory rebuilt after G_k has trained (dynamic memory, R >= 1) depends on every
    image through G_k's weights; one built once in round 0 uses the data-independent initial
    G_k. No per-image bound holds through such weights."""
    return bool(
        config.generator
        and config.metric_loss
        and config.local_epochs > 0
        and config.dynamic_memory
        and rounds > 0
    )


def releases_for(config: FedDyMemConfig, rounds: int) -> int:
    """Memories a client releases over R rounds after round 0: R + 1, or 1 without dynamic
    memory (M_k is built once and re-sent unchanged, which costs nothing more)."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    return rounds + 1 if config.dynamic_memory else 1


@dataclass(frozen=True)
class PrivacyGuarantee:
    """What a config's upload guarantees: `epsilon` at `delta` over `releases` releases when
    `formal`, else None with the `reason` no formal bound holds. `noise_std` is the noise std on
    each coordinate of the released statistic (of S for position_average, of each vector
    otherwise); `sensitivity` Delta (None where no bound holds)."""

    formal: bool
    epsilon: float | None
    delta: float
    releases: int
    noise_multiplier: float
    clip_norm: float | None
    sensitivity: float | None
    noise_std: float | None
    reason: str


def privacy_guarantee(
    config: FedDyMemConfig, *, rounds: int, delta: float, num_positions: int
) -> PrivacyGuarantee:
    """The (epsilon, delta) the upload of `config` gives over R rounds, or why it gives none.

    `num_positions` is H*W of the feature grid (the sensitivity depends on it).
    """
    releases = releases_for(config, rounds)
    clip, sigma = config.dp_clip_norm, config.dp_noise_multiplier
    trained = embeds_through_trained_generator(config, rounds=rounds)
    if config.public_vote:
        return _public_vote_guarantee(config, releases=releases, delta=delta, trained=trained)
    if clip is None:
        return PrivacyGuarantee(
            formal=False,
            epsilon=None,
            delta=delta,
            releases=releases,
            noise_multiplier=0.0,
            clip_norm=None,
            sensitivity=None,
            noise_std=None,
            reason="no DP option: the memory is uploaded as computed",
        )
    if config.memory_reduce != "position_average":
        reason = (
            f"memory_reduce={config.memory_reduce!r}: one image's effect on the released "
            "vectors is unbounded; clip + noise is a heuristic"
        )
    elif trained:
        reason = (
            "G_k is trained on this client's data without DP: the per-image clip does not bound "
            "its effect through G_k's weights"
        )
    else:
        sens = release_sensitivity(num_positions, clip)
        return PrivacyGuarantee(
            formal=True,
            epsilon=epsilon_for(sigma, releases, delta),
            delta=delta,
            releases=releases,
            noise_multiplier=sigma,
            clip_norm=clip,
            sensitivity=sens,
            noise_std=sigma * sens,
            reason=(
                "Gaussian mechanism on (per-position sums of clipped vectors, scaled count), "
                "add/remove-one-image neighbours, RDP composition over releases"
            ),
        )
    return PrivacyGuarantee(
        formal=False,
        epsilon=None,
        delta=delta,
        releases=releases,
        noise_multiplier=sigma,
        clip_norm=clip,
        sensitivity=None,
        noise_std=sigma * clip,
        reason=reason,
    )


def _public_vote_guarantee(
    config: FedDyMemConfig, *, releases: int, delta: float, trained: bool
) -> PrivacyGuarantee:
    """The public vote's (privacy/public_vote.py): one Gaussian mechanism of sensitivity 1
    (an image's vote has norm 1) per release, noise multiplier `vote_noise`; formal unless the
    public vectors are embedded by a G_k trained on the site's images."""
    sigma = config.vote_noise
    reason = (
        "public vote with a G_k trained on this client's data: the vote is a Gaussian "
        "mechanism, but the public vectors are embedded by weights the vote does not bound "
        "(fix G_k: dynamic_memory = false or local_epochs = 0)"
        if trained
        else "public vote: Gaussian mechanism on the per-image unit votes over public codebook "
        "cells, add/remove-one-image neighbours, RDP composition over releases"
    )
    return PrivacyGuarantee(
        formal=not trained,
        epsilon=None if trained else epsilon_for(sigma, releases, delta),
        delta=delta,
        releases=releases,
        noise_multiplier=sigma,
        clip_norm=None,
        sensitivity=1.0,
        noise_std=sigma,
        reason=reason,
    )
