"""Membership inference: was this image in the site's training set, judged from what it sends?

The attacker holds a released memory (the site's upload M_k, or the server's M_g) and a
candidate image. It computes the candidate's patch vectors in the memory's space (an attacker
that knows the backbone, and G_k where one is trained: an upper bound, G_k never leaves the
site) and the distance of each patch to its nearest memory item. Two attacks score each image:

* ``distance``: minus the mean of the smallest ``low_fraction`` of its patch log-distances.
  Exact copies (a raw bank, a coreset of real patch vectors) put a member's patches at
  distance zero; averaged items (k-means centres, position means) pull them only nearer.
* ``calibrated``: the same statistic against ``shadow`` memories built the attacker's way,
  by the same upload pipeline from random subsets of *public* images of the same kind (never
  the candidate's): an image whose patches are near any memory of this kind is not evidence of
  membership. Score = (mean shadow statistic - target statistic) / the shadows' pooled
  standard deviation, as offline likelihood-ratio attacks (LiRA, Carlini et al. 2022) with a
  fixed variance.

Reported per attack: ROC AUC and the TPR at 0.1 % and 1 % FPR (sklearn.metrics.roc_curve).
With n non-members, FPR levels under 1/n can only be met at zero false positives; the
report gives ``n_nonmembers`` so that is visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from feddymem.detect.knn import NearestNeighbors

FPR_LEVELS = (0.001, 0.01)
_EPS = 1e-6


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_level: float) -> float:
    """Highest true-positive rate at a threshold whose false-positive rate is <= `fpr_level`
    (labels 1 = member; larger scores = more likely a member)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc_summary(members: torch.Tensor, nonmembers: torch.Tensor) -> dict[str, float]:
    """AUC and TPR at each of FPR_LEVELS of scores for members and non-members (larger =
    member)."""
    scores = torch.cat([members, nonmembers]).double().numpy()
    labels = np.r_[np.ones(members.numel()), np.zeros(nonmembers.numel())]
    out = {"auc": float(roc_auc_score(labels, scores))}
    for level in FPR_LEVELS:
        out[f"tpr_at_{level * 100:g}%"] = tpr_at_fpr(labels, scores, level)
    return out


def nn_distances(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Distance of every query patch (N, P, d) to its nearest memory item (M, d): (N, P)."""
    n, p, d = queries.shape
    index = NearestNeighbors(memory.float(), backend="torch", screen=False)
    dist, _ = index.search(queries.reshape(n * p, d).float(), 1)
    return dist.view(n, p)


def image_statistic(dist: torch.Tensor, *, low_fraction: float = 0.1) -> torch.Tensor:
    """Per image (N, P) -> (N,): the mean of the smallest `low_fraction` of its patches'
    log-distances (small = near the memory)."""
    k = max(1, math.ceil(low_fraction * dist.shape[1]))
    logs = torch.log(dist.double() + _EPS)
    return logs.topk(k, dim=1, largest=False).values.mean(dim=1)


@dataclass(frozen=True)
class Candidates:
    """Candidate images' patch vectors in the memory's space: members (N_in, P, d), then
    non-members (N_out, P, d)."""

    members: torch.Tensor
    nonmembers: torch.Tensor

    @property
    def all(self) -> torch.Tensor:
        return torch.cat([self.members, self.nonmembers])


def membership_attacks(
    memory: torch.Tensor,
    candidates: Candidates,
    *,
    shadows: Sequence[torch.Tensor] = (),
    low_fraction: float = 0.1,
) -> dict[str, dict[str, float]]:
    """Both attacks on one released memory (M, d); `shadows` are memories built the same way
    from public images (the calibrated attack needs at least two)."""
    n_in = candidates.members.shape[0]
    queries = candidates.all
    target = image_statistic(nn_distances(queries, memory), low_fraction=low_fraction)
    ref = (
        [image_statistic(nn_distances(queries, s), low_fraction=low_fraction) for s in shadows]
        if len(shadows) >= 2
        else []
    )
    return attack_summaries(target, ref, n_members=n_in)


def attack_summaries(
    target: torch.Tensor, shadows: Sequence[torch.Tensor], *, n_members: int
) -> dict[str, dict[str, float]]:
    """Both attacks from per-image statistics (N,) (small = near the release; members first,
    `n_members` of them): ``distance`` reads the target's alone, ``calibrated`` (two shadow
    statistics or more) its standardised gap below the shadows' mean."""
    n_in = n_members  # members first in `target`
    out = {"distance": roc_summary(-target[:n_in], -target[n_in:])}
    if len(shadows) >= 2:
        ref = torch.stack(list(shadows))
        spread = float(ref.std(dim=0).pow(2).mean().sqrt()) + _EPS
        score = (ref.mean(dim=0) - target) / spread
        out["calibrated"] = roc_summary(score[:n_in], score[n_in:])
    for result in out.values():
        result["n_members"] = float(n_in)
        result["n_nonmembers"] = float(target.numel() - n_in)
    return out


def describe_attacks(result: dict[str, dict[str, float]]) -> str:
    """One log line's worth of `attack_summaries`' result: AUC and TPR at 1 % FPR per attack."""
    return ", ".join(
        f"{attack} AUC {r['auc']:.3f} (TPR@1% {r['tpr_at_1%']:.3f})"
        for attack, r in result.items()
        if isinstance(r, dict) and "auc" in r
    )


def query_positions(hw: int, count: int, *, seed: int) -> torch.Tensor:
    """A seeded, sorted subset of `count` of the `hw` grid positions (all when count >= hw)."""
    if count >= hw:
        return torch.arange(hw)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(hw, generator=gen)[:count].sort().values


def flat_queries(z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Patch vectors (N, d, H, W) -> (N, len(positions), d) at the given flat positions."""
    n, d = z.shape[:2]
    return z.reshape(n, d, -1)[:, :, positions].transpose(1, 2).contiguous()
