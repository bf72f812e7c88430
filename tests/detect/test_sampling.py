"""Behaviour of feddymem.detect.sampling: exact sizes, seed stability, greedy = brute-force reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from feddymem.detect.sampling import (
    SAMPLERS,
    greedy_coreset,
    random_subsample,
    resolve_size,
    sample_indices,
    subsample,
)


def features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def brute_force_greedy(x: torch.Tensor, first: int, m: int) -> list[int]:
    """Reference k-center greedy in float64 with full pairwise distances."""
    dist = torch.cdist(x.double(), x.double())
    chosen = [first]
    min_d = dist[first].clone()
    for _ in range(m - 1):
        min_d[chosen] = -1.0
        nxt = int(torch.argmax(min_d))
        chosen.append(nxt)
        min_d = torch.minimum(min_d, dist[nxt])
    return chosen


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


# --------------------------------------------------------------------------- sizes


def test_resolve_size() -> None:
    assert resolve_size(100, ratio=0.29, size=None) == 29  # not floor(28.999...)
    assert resolve_size(10, ratio=0.01, size=None) == 1  # never empty
    assert resolve_size(10, ratio=1.0, size=None) == 10
    assert resolve_size(10, ratio=None, size=7) == 7
    for ratio, size in [(None, None), (0.5, 3)]:
        with pytest.raises(ValueError, match="exactly one"):
            resolve_size(10, ratio=ratio, size=size)
    for ratio in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="ratio"):
            resolve_size(10, ratio=ratio, size=None)
    for size in (0, 11):
        with pytest.raises(ValueError, match="size"):
            resolve_size(10, ratio=None, size=size)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_samplers_reject_bad_features(method: str) -> None:
    sampler = SAMPLERS[method]
    bad = features(10, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sampler(bad, size=2, seed=0)
    with pytest.raises(ValueError, match="2-D"):
        sampler(torch.zeros(10), size=2, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        sampler(torch.zeros(0, 4), size=2, seed=0)
    with pytest.raises(ValueError, match="floating"):
        sampler(torch.zeros(10, 4, dtype=torch.int64), size=2, seed=0)


# --------------------------------------------------------------------------- random


def test_random_subsample_exact_distinct_and_seeded() -> None:
    x = features(1000, 8)
    idx = random_subsample(x, ratio=0.1, seed=3)
    assert idx.shape == (100,) and idx.dtype == torch.int64
    assert len(set(idx.tolist())) == 100
    assert bool((idx[1:] > idx[:-1]).all()) and 0 <= int(idx[0]) and int(idx[-1]) < 1000
    assert torch.equal(idx, random_subsample(x, ratio=0.1, seed=3))
    assert not torch.equal(idx, random_subsample(x, ratio=0.1, seed=4))
    assert random_subsample(x, size=1000, seed=0).tolist() == list(range(1000))


# --------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("seed", range(3))
def test_greedy_matches_brute_force_without_projection(seed: int) -> None:
    x = features(300, 12, seed=seed)
    idx = greedy_coreset(x, size=40, projection_dim=None, seed=seed, chunk_size=64)
    assert idx.tolist() == brute_force_greedy(x, int(idx[0]), 40)


def assert_farthest_first(x: torch.Tensor, chosen: torch.Tensor, rtol: float = 1e-4) -> None:
    """Every chosen row (after the first) is, to float32 rounding, the row farthest from the
    rows chosen before it (float64 reference distances)."""
    dist = torch.cdist(x.double(), x.double()[chosen]).cummin(dim=1).values  # (N, M)
    for t in range(1, len(chosen)):
        running = dist[:, t - 1].clone()
        running[chosen[:t]] = -1.0
        assert float(running[chosen[t]]) >= float(running.max()) * (1.0 - rtol), t


@pytest.mark.parametrize("chunk_size", [64, 1000, 100_000])
def test_lazy_update_chooses_what_updating_every_row_chooses(chunk_size: int) -> None:
    """Clustered rows, where the lazy update skips most chunks: the lazy selection is a
    farthest-point selection and the same set as updating every row at every step (two rows
    at near-equal distance may swap places, by float rounding)."""
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(12, 24, generator=gen) * 6.0
    x = centres[torch.randint(12, (6000,), generator=gen)] + torch.randn(6000, 24, generator=gen)
    lazy = greedy_coreset(x, size=300, projection_dim=None, seed=1, chunk_size=chunk_size)
    plain = greedy_coreset(x, size=300, projection_dim=None, seed=1, lazy=False)
    assert set(lazy.tolist()) == set(plain.tolist())
    assert_farthest_first(x, lazy)
    small = features(500, 10, seed=4)
    first = greedy_coreset(small, size=60, projection_dim=None, seed=2, chunk_size=chunk_size)
    assert first.tolist() == brute_force_greedy(small, int(first[0]), 60)


def test_greedy_projection_is_seeded_and_skipped_for_small_dims() -> None:
    x = features(500, 64, seed=1)
    a = greedy_coreset(x, size=50, projection_dim=16, seed=7)
    assert torch.equal(a, greedy_coreset(x, size=50, projection_dim=16, seed=7))
    assert not torch.equal(a, greedy_coreset(x, size=50, projection_dim=16, seed=8))
    # D <= projection_dim: no projection, identical to projection_dim=None.
    b = greedy_coreset(x, size=50, projection_dim=64, seed=7)
    assert torch.equal(b, greedy_coreset(x, size=50, projection_dim=None, seed=7))
    # chunking does not change the result
    assert torch.equal(b, greedy_coreset(x, size=50, projection_dim=None, seed=7, chunk_size=7))


def test_greedy_exact_sizes_and_distinct_even_with_duplicates() -> None:
    x = features(5, 3).repeat(20, 1)  # 100 rows, only 5 distinct
    for m in (1, 5, 6, 99, 100):
        idx = greedy_coreset(x, size=m, seed=0)
        assert idx.shape == (m,) and len(set(idx.tolist())) == m
    # the first 5 picks cover the 5 distinct vectors
    first5 = greedy_coreset(x, size=5, seed=0)
    assert len({int(i) % 5 for i in first5}) == 5
    assert greedy_coreset(x, ratio=0.25, seed=0).shape == (25,)


def test_greedy_covers_clusters_better_than_random() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 32, generator=gen) * 20
    order = torch.randperm(1600, generator=gen)
    cluster = torch.arange(8).repeat_interleave(200)[order]
    x = centres[cluster] + torch.randn(1600, 32, generator=gen)

    greedy = greedy_coreset(x, size=8, projection_dim=16, seed=0)
    rand = random_subsample(x, size=8, seed=0)
    assert len(set(cluster[greedy].tolist())) == 8  # one centre per cluster
    assert len(set(cluster[rand].tolist())) < 8


def test_greedy_rejects_bad_options() -> None:
    x = features(10, 4)
    with pytest.raises(ValueError, match="projection_dim"):
        greedy_coreset(x, size=2, projection_dim=0, seed=0)
    with pytest.raises(ValueError, match="chunk_size"):
        greedy_coreset(x, size=2, seed=0, chunk_size=0)


def test_greedy_tiny_banks_do_not_grow_memory() -> None:
    banks = [features(int(n), 16, seed=i) for i, n in enumerate(range(20, 220, 4))]
    for bank in banks[:10]:
        greedy_coreset(bank, ratio=0.5, seed=0)
    before = current_rss_mb()
    for _ in range(3):
        for bank in banks:
            greedy_coreset(bank, ratio=0.5, seed=0)
    assert current_rss_mb() - before < 64.0


def test_greedy_medium_bank_gives_distinct_rows() -> None:
    x = features(20_000, 152)
    idx = greedy_coreset(x, size=400, seed=0)
    assert idx.shape == (400,) and idx.unique().numel() == 400


# --------------------------------------------------------------------------- registry


def test_registry_and_subsample() -> None:
    assert set(SAMPLERS) == {"random", "greedy", "none"}
    x = features(200, 6, seed=2).double()
    for method in ("random", "greedy"):
        idx = sample_indices(x, method=method, size=20, seed=5)
        rows = subsample(x, method=method, size=20, seed=5)
        assert rows.shape == (20, 6) and rows.dtype == torch.float64
        assert torch.equal(rows, x[idx])
    assert torch.equal(subsample(x, method="none", seed=0), x)
    assert torch.equal(subsample(x, method="none", ratio=0.1, seed=0), x)
    with pytest.raises(ValueError, match="unknown sampling method 'gredy'"):
        subsample(x, method="gredy", size=3, seed=0)
