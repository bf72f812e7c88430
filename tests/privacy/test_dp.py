"""Clipping, the Gaussian mechanism on position-averaged memories, and its accounting."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from scipy import optimize, stats

from feddymem.config import ConfigError, FedDyMemConfig
from feddymem.privacy.dp import (
    COUNT_SCALE,
    clip_vectors,
    epsilon_for,
    gaussian_position_average,
    noise_for_epsilon,
    position_statistic,
    privacy_guarantee,
    private_memory,
    release_sensitivity,
    releases_for,
    sum_sensitivity,
)


def _z(n: int, d: int = 6, h: int = 3, w: int = 4, *, scale: float = 5.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, h, w, generator=gen)


def _released(z: torch.Tensor, clip: float) -> torch.Tensor:
    """The pre-noise statistic f(D) = (S, beta n) as one vector."""
    sums, scaled_count = position_statistic(z, clip)
    return torch.cat([sums.flatten(), torch.tensor([scaled_count])])


def test_clip_bounds_norms_and_keeps_short_vectors() -> None:
    z = _z(5)
    clipped = clip_vectors(z, 3.0)
    norms = clipped.norm(dim=1)
    assert float(norms.max()) <= 3.0 + 1e-5
    short = z.norm(dim=1) <= 3.0
    assert torch.allclose(clipped.permute(0, 2, 3, 1)[short], z.permute(0, 2, 3, 1)[short])
    with pytest.raises(ValueError):
        clip_vectors(z, 0.0)


@pytest.mark.parametrize("clip", [0.5, 4.0, 50.0])
def test_removing_or_adding_one_image_moves_the_release_by_at_most_the_sensitivity(
    clip: float,
) -> None:
    z = _z(9)
    h, w = z.shape[2:]
    bound = release_sensitivity(h * w, clip)
    full = _released(z, clip)
    for i in range(z.shape[0]):
        without = _released(torch.cat([z[:i], z[i + 1 :]]), clip)
        assert float((full - without).norm()) <= bound * (1 + 1e-5)
    extra = _released(torch.cat([z, _z(1, seed=99) * 100]), clip)  # an outlier image added
    assert float((extra - full).norm()) <= bound * (1 + 1e-5)


def test_the_bound_is_tight_when_every_vector_is_clipped() -> None:
    z = _z(4, scale=100.0)  # every vector far longer than C
    h, w = z.shape[2:]
    moved = float((_released(z, 1.0) - _released(z[1:], 1.0)).norm())
    assert moved == pytest.approx(release_sensitivity(h * w, 1.0), rel=1e-4)
    assert release_sensitivity(h * w, 1.0) == pytest.approx(
        sum_sensitivity(h * w, 1.0) * math.sqrt(1 + COUNT_SCALE**2)
    )


def test_without_noise_and_clip_the_release_is_the_position_average() -> None:
    z = _z(6)
    mem = gaussian_position_average(z, clip_norm=1e6, noise_multiplier=0.0, seed=0)
    expected = z.mean(dim=0).permute(1, 2, 0).reshape(-1, z.shape[1])
    assert torch.allclose(mem.vectors, expected, atol=1e-5)
    assert mem.n_images == 6
    assert torch.all(mem.weights == 6)


def test_noise_std_matches_sigma_times_sensitivity() -> None:
    n, d, h, w = 2000, 64, 8, 8
    z = torch.zeros(1, d, h, w).expand(n, -1, -1, -1)  # sums are exactly zero
    sigma, clip = 0.7, 2.0
    mem = gaussian_position_average(z, clip_norm=clip, noise_multiplier=sigma, seed=3)
    noise = mem.vectors * mem.n_images  # = noise on S, up to the count's 0.2 % noise
    expected = sigma * release_sensitivity(h * w, clip)
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(mem.n_images - n) < 6 * sigma * release_sensitivity(h * w, clip) / (
        COUNT_SCALE * sum_sensitivity(h * w, clip)
    )


def test_noise_is_seeded_per_round() -> None:
    z = _z(5)
    cfg = FedDyMemConfig(
        memory_reduce="position_average", generator=False, dp_clip_norm=3.0, dp_noise_multiplier=1.0
    )
    a = private_memory(z, config=cfg, round_idx=1)
    b = private_memory(z, config=cfg, round_idx=1)
    c = private_memory(z, config=cfg, round_idx=2)
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.equal(a.vectors, c.vectors)
    assert a.vectors.shape == (12, 6)


def test_heuristic_paths_clip_and_noise_every_vector() -> None:
    z = _z(20, d=8, h=4, w=4)
    for reduce in ("kmeans", "none"):
        cfg = FedDyMemConfig(
            memory_reduce=reduce,
            client_memory_size=16,
            kmeans_iterations=3,
            dp_clip_norm=2.0,
            dp_noise_multiplier=0.0,
        )
        clean = private_memory(z, config=cfg, round_idx=0)
        assert clean.vectors.shape[0] <= 16
        assert float(clean.vectors.norm(dim=1).max()) <= 2.0 + 1e-5
        noisy = private_memory(
            z, config=dataclasses.replace(cfg, dp_noise_multiplier=3.0), round_idx=0
        )
        diff = noisy.vectors - clean.vectors
        assert float(diff.std()) == pytest.approx(3.0 * 2.0, rel=0.25)


def test_epsilon_decreases_with_noise_and_grows_with_releases() -> None:
    sigmas = [0.5, 1.0, 2.0, 4.0, 8.0]
    eps = [epsilon_for(s, 3, 1e-5) for s in sigmas]
    assert all(a > b for a, b in itertools.pairwise(eps))
    by_rounds = [epsilon_for(1.5, r, 1e-5) for r in (1, 2, 5, 20)]
    assert all(a < b for a, b in itertools.pairwise(by_rounds))
    assert epsilon_for(0.0, 3, 1e-5) == math.inf
    assert epsilon_for(1.0, 0, 1e-5) == 0.0
    assert epsilon_for(1.0, 2, 1e-3) < epsilon_for(1.0, 2, 1e-7)
    with pytest.raises(ValueError):
        epsilon_for(1.0, 2, 0.0)


def _exact_gaussian_epsilon(sigma: float, releases: int, delta: float) -> float:
    """Tight epsilon of the composed Gaussian mechanism: one Gaussian with mu = sqrt(R) / sigma
    (Balle & Wang 2018; Dong, Roth & Su 2019)."""
    mu = math.sqrt(releases) / sigma

    def gap(eps: float) -> float:
        d = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        return d - delta

    return float(optimize.brentq(gap, 0.0, 500.0))


@pytest.mark.parametrize(("sigma", "releases"), [(1.0, 1), (2.0, 3), (4.0, 10), (0.8, 5)])
def test_rdp_epsilon_is_a_valid_and_close_upper_bound_of_the_exact_one(
    sigma: float, releases: int
) -> None:
    exact = _exact_gaussian_epsilon(sigma, releases, 1e-5)
    rdp = epsilon_for(sigma, releases, 1e-5)
    assert exact <= rdp <= 1.35 * exact


@pytest.mark.parametrize(("epsilon", "releases"), [(1.0, 1), (4.0, 5), (10.0, 3)])
def test_noise_for_epsilon_inverts_epsilon_for(epsilon: float, releases: int) -> None:
    sigma = noise_for_epsilon(epsilon, releases, 1e-5)
    assert epsilon_for(sigma, releases, 1e-5) <= epsilon
    assert epsilon_for(sigma * 0.99, releases, 1e-5) > epsilon


def test_guarantee_says_when_it_holds() -> None:
    fixed = FedDyMemConfig(
        memory_reduce="position_average",
        generator=False,
        dp_clip_norm=10.0,
        dp_noise_multiplier=2.0,
    )
    g = privacy_guarantee(fixed, rounds=3, delta=1e-5, num_positions=16)
    assert g.formal and g.releases == 4
    assert g.epsilon == pytest.approx(epsilon_for(2.0, 4, 1e-5))
    assert g.sensitivity == pytest.approx(release_sensitivity(16, 10.0))
    once = dataclasses.replace(fixed, dynamic_memory=False)
    assert releases_for(once, 3) == 1
    assert privacy_guarantee(once, rounds=3, delta=1e-5, num_positions=16).epsilon == (
        pytest.approx(epsilon_for(2.0, 1, 1e-5))
    )
    trained = dataclasses.replace(fixed, generator=True)
    g = privacy_guarantee(trained, rounds=3, delta=1e-5, num_positions=16)
    assert not g.formal and g.epsilon is None and "G_k" in g.reason
    # Memory built once in round 0 with the untrained G_k: formal again.
    frozen = dataclasses.replace(trained, dynamic_memory=False)
    assert privacy_guarantee(frozen, rounds=3, delta=1e-5, num_positions=16).formal
    km = dataclasses.replace(fixed, memory_reduce="kmeans")
    g = privacy_guarantee(km, rounds=3, delta=1e-5, num_positions=16)
    assert not g.formal and "heuristic" in g.reason
    off = privacy_guarantee(FedDyMemConfig(), rounds=3, delta=1e-5, num_positions=16)
    assert not off.formal and off.clip_norm is None


def test_config_validates_dp_options() -> None:
    with pytest.raises(ConfigError, match="dp_noise_multiplier"):
        FedDyMemConfig(dp_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="dp_clip_norm"):
        FedDyMemConfig(dp_clip_norm=-1.0)
    with pytest.raises(ConfigError, match="dp_noise_multiplier"):
        FedDyMemConfig(dp_clip_norm=1.0, dp_noise_multiplier=-0.1)


def test_the_hypothesis_testing_bounds_of_a_guarantee() -> None:
    from feddymem.privacy.dp import auc_bound, tpr_bound

    # no privacy loss: no test beats chance; epsilon 0.2 at delta 1e-5: TPR <= e^0.2 x 1 % + delta
    assert tpr_bound(0.0, 0.0, 0.01) == pytest.approx(0.01)
    assert auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    assert tpr_bound(0.2, 1e-5, 0.01) == pytest.approx(math.exp(0.2) * 0.01 + 1e-5)
    assert 0.5 < auc_bound(0.2, 1e-5) < auc_bound(1.0, 1e-5) < 1.0
    assert tpr_bound(math.inf, 1e-5, 0.01) == 1.0 and auc_bound(math.inf, 1e-5) == 1.0
    # delta = 0: two lines that meet at FPR 1 / (1 + e^eps); the area under them in closed form
    eps = 0.7
    knee = 1.0 / (1.0 + math.exp(eps))
    area = math.exp(eps) * knee**2 / 2 + (1 - knee) - math.exp(-eps) * (1 - knee) ** 2 / 2
    assert auc_bound(eps, 0.0) == pytest.approx(area, abs=1e-6)
