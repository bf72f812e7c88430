"""fed-padim's upload under the membership attacks: the Gaussians of a few members' moments
give their members away; Gaussians of other images of the same kind do not."""

from __future__ import annotations

import pytest
import torch

from feddymem.privacy.audit.gaussian import (
    at_positions,
    fed_padim_membership,
    gaussian_statistic,
    released_gaussians,
)
from feddymem.privacy.audit.membership import roc_summary
from feddymem.privacy.audit.releases import MembershipData


def _features(n: int, seed: int, *, d: int = 12, hw: int = 4) -> torch.Tensor:
    """n "images" of patch features (n, d, hw, hw) around a shared mean."""
    gen = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(n, d, hw, hw, generator=gen)


def _data(members: torch.Tensor, nonmembers: torch.Tensor, public: torch.Tensor) -> MembershipData:
    return MembershipData(
        members=members,
        nonmembers=nonmembers,
        public=public,
        positions=torch.arange(16),
        shadows=3,
        seed=0,
        image_pool=torch.zeros(1, 3, 8, 8),
    )


ALL = torch.arange(16)


def test_released_gaussians_are_the_members_mean_at_the_queried_positions() -> None:
    members = _features(10, 0)
    mean, precision = released_gaussians(members, ALL, eps=0.01)
    assert torch.allclose(mean, members.flatten(2).mean(0).T, atol=1e-5)
    assert precision.shape == (16, 12, 12)
    some = torch.tensor([3, 9])
    part_mean, part_precision = released_gaussians(members, some, eps=0.01)
    assert torch.allclose(part_mean, mean[some]) and torch.allclose(part_precision, precision[some])


def test_a_members_patches_sit_nearer_its_own_gaussians() -> None:
    members, nonmembers = _features(10, 0), _features(10, 1)
    picked = at_positions(torch.cat([members, nonmembers]), ALL)
    stat = gaussian_statistic(picked, *released_gaussians(members, ALL, eps=0.01))
    assert stat.shape == (20,)
    assert stat[:10].max() < stat[10:].min()


def test_attacks_separate_members_only_when_the_moments_hold_them() -> None:
    members, nonmembers, public = _features(10, 0), _features(10, 1), _features(40, 2)
    own = fed_padim_membership(_data(members, nonmembers, public), eps=0.01)
    assert own["distance"]["auc"] == pytest.approx(1.0)
    assert own["calibrated"]["auc"] > 0.95
    assert own["distance"]["n_nonmembers"] == 10
    assert own["items"] == 16 and own["floats_sent"] == 1 + 16 * 12 + 16 * 12 * 12
    # Gaussians of ten other images of the same kind: the statistic cannot tell the two sets
    picked = at_positions(torch.cat([members, nonmembers]), ALL)
    stat = gaussian_statistic(picked, *released_gaussians(_features(10, 4), ALL, eps=0.01))
    summary = roc_summary(-stat[:10], -stat[10:])
    assert 0.2 < summary["auc"] < 0.8


def test_moment_noise_is_seeded_and_widens_the_released_gaussians() -> None:
    """Noise on the patch vectors before the moments (fed-padim's defence): none gives the
    exact Gaussians; some is reproducible from its seed, moves the mean and widens the
    covariance (a smaller precision)."""
    members = _features(10, 0)
    exact_mean, exact_precision = released_gaussians(members, ALL, eps=0.01)
    same = released_gaussians(members, ALL, eps=0.01, noise=0.0, seed=5)
    assert torch.equal(same[0], exact_mean) and torch.equal(same[1], exact_precision)
    mean, precision = released_gaussians(members, ALL, eps=0.01, noise=2.0, seed=5)
    again = released_gaussians(members, ALL, eps=0.01, noise=2.0, seed=5)
    assert torch.equal(mean, again[0]) and torch.equal(precision, again[1])
    assert not torch.allclose(mean, exact_mean, atol=1e-3)
    trace = torch.diagonal(precision, dim1=1, dim2=2).sum(1)
    exact_trace = torch.diagonal(exact_precision, dim1=1, dim2=2).sum(1)
    assert bool((trace < exact_trace).all())
