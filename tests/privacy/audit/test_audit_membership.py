"""Membership inference: TPR at low FPR by hand, and the attack separates members only when the
memory holds them; the upload defences and whole-image identification."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feddymem.config import FedDyMemConfig
from feddymem.method.client import build_upload
from feddymem.method.reduce import ReducedMemory
from feddymem.privacy.audit.membership import (
    Candidates,
    membership_attacks,
    roc_summary,
    tpr_at_fpr,
)
from feddymem.privacy.audit.scores import identification
from feddymem.privacy.defences import drop_near_copies, noisy_features


def test_tpr_at_fpr_and_auc_on_a_hand_example() -> None:
    members = torch.tensor([0.9, 0.8, 0.3])
    nonmembers = torch.tensor([0.7, 0.2, 0.1, 0.05])
    labels = np.r_[np.ones(3), np.zeros(4)]
    scores = torch.cat([members, nonmembers]).numpy()
    # no false positive: threshold above 0.7 keeps 0.9 and 0.8
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(labels, scores, 0.1) == pytest.approx(2 / 3)
    # one false positive of four (0.7) lets the threshold drop to 0.3: every member
    assert tpr_at_fpr(labels, scores, 0.25) == pytest.approx(1.0)
    summary = roc_summary(members, nonmembers)
    assert summary["auc"] == pytest.approx(11 / 12)  # 0.3 loses to 0.7 only
    assert summary["tpr_at_1%"] == pytest.approx(2 / 3)


def _images(n: int, seed: int, *, p: int = 24, d: int = 8) -> torch.Tensor:
    """n "images" of p patch vectors (n, p, d) around a shared texture mean."""
    gen = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(n, p, d, generator=gen)


def test_attack_finds_members_in_their_raw_bank_and_not_in_a_non_member_bank() -> None:
    members, nonmembers, others = _images(30, 0), _images(30, 1), _images(30, 2)
    shadows = [_images(30, 10 + i).reshape(-1, 8) for i in range(3)]
    candidates = Candidates(members=members, nonmembers=nonmembers)
    raw = membership_attacks(members.reshape(-1, 8), candidates, shadows=shadows)
    assert raw["distance"]["auc"] == pytest.approx(1.0)
    assert raw["calibrated"]["auc"] > 0.99
    assert raw["distance"]["tpr_at_1%"] == pytest.approx(1.0)
    public = membership_attacks(others.reshape(-1, 8), candidates, shadows=shadows)
    for attack in ("distance", "calibrated"):
        assert 0.3 < public[attack]["auc"] < 0.7
        assert public[attack]["n_nonmembers"] == 30


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None, :] - b[None]).norm(dim=2)


def test_noise_and_margin_move_the_upload_off_the_training_vectors() -> None:
    z = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    cfg = FedDyMemConfig(memory_reduce="coreset", client_memory_size=20, seed=3)
    plain = build_upload(z, config=cfg, round_idx=1)
    assert _dist(plain.vectors, flat).min(dim=1).values.max() < 1e-5  # exact copies
    noisy = build_upload(
        z, config=FedDyMemConfig(**{**cfg.__dict__, "upload_noise": 0.5}), round_idx=1
    )
    assert noisy.vectors.shape == (20, 8)
    assert _dist(noisy.vectors, flat).min(dim=1).values.min() > 0.05
    assert torch.equal(
        noisy.vectors,
        build_upload(
            z, config=FedDyMemConfig(**{**cfg.__dict__, "upload_noise": 0.5}), round_idx=1
        ).vectors,
    )
    assert not torch.equal(noisy_features(z, relative_std=0.5, seed=1), z)
    # margin: items that are training vectors go, the one far item stays
    far = torch.full((1, 8), 50.0)
    memory = ReducedMemory(vectors=torch.cat([flat[:5], far]), weights=torch.ones(6), n_images=6)
    kept = drop_near_copies(memory, z, relative_margin=0.1)
    assert torch.equal(kept.vectors, far) and kept.weights.shape == (1,)


def test_identification_picks_the_true_image_only_when_the_reconstruction_is_it() -> None:
    gen = torch.Generator().manual_seed(4)
    truth = torch.rand(5, 3, 8, 8, generator=gen)
    pool = torch.cat([truth, torch.rand(20, 3, 8, 8, generator=gen)])
    exact = identification(truth + 0.01, truth, pool, neighbours=4)
    assert exact["identification"] == 1.0 and exact["chance"] == pytest.approx(0.2)
    mean = identification(
        pool.mean(dim=0, keepdim=True).expand_as(truth), truth, pool, neighbours=4
    )
    assert mean["identification"] < 1.0
