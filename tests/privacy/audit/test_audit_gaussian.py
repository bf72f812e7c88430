"""fed-padim's upload under the membership attacks: the Gaussians of a few members' moments
give their members away; Gaussians of other images of the same kind do not."""

from __future__ import annotations

import pytest
import torch

from feddymem.detect.gaussian import PatchMoments, regularised_precision
from feddymem.privacy.audit.gaussian import (
    at_positions,
    fed_padim_membership,
    gaussian_statistic,
    released_gaussians,
    row_name,
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


def test_windowed_release_is_what_a_windowing_site_sends() -> None:
    """The attack's Gaussians with `window` are those of the site's windowed moments
    (`PatchMoments.windowed`) at the queried positions, and they make members harder to tell."""
    members = _features(10, 0)
    some = torch.tensor([0, 5, 15])
    mean, precision = released_gaussians(members, some, eps=0.01, window=3)
    site = PatchMoments()
    site.update(members)
    site_mean, site_cov = site.windowed(3).mean_covariance()
    torch.testing.assert_close(mean, site_mean[some].float(), rtol=1e-5, atol=1e-5)
    site_precision = regularised_precision(site_cov[some], eps=0.01).float()
    torch.testing.assert_close(precision, site_precision, rtol=1e-4, atol=1e-4)
    # noise is drawn once per patch vector, however many squares it falls in: reproducible
    noisy = released_gaussians(members, some, eps=0.01, window=3, noise=1.0, seed=2)
    again = released_gaussians(members, some, eps=0.01, window=3, noise=1.0, seed=2)
    assert torch.equal(noisy[0], again[0]) and not torch.allclose(noisy[0], mean, atol=1e-3)
    # 10 members in 12 dimensions: per position the covariance holds them; pooled over 3 x 3
    # squares, each Gaussian rests on 90 vectors and the distance attack loses its edge
    nonmembers, public = _features(10, 1), _features(40, 2)
    data = _data(members, nonmembers, public)
    exact = fed_padim_membership(data, eps=0.01)["distance"]["auc"]
    windowed = fed_padim_membership(data, eps=0.01, window=3)["distance"]["auc"]
    assert windowed < exact


def test_row_names_say_the_defences() -> None:
    assert row_name(0.0, 1) == "fed-padim"
    assert row_name(2.0, 1) == "fed-padim, moment noise 2"
    assert row_name(0.0, 3) == "fed-padim, window 3"
    assert row_name(0.5, 5) == "fed-padim, window 5, moment noise 0.5"
