"""The FedDyMem pieces: generator, metric loss, memory-reduce, server aggregation."""

from __future__ import annotations

import pytest
import torch

from feddymem.detect.knn import NearestNeighbors
from feddymem.method.aggregate import aggregate_memories
from feddymem.method.generator import MemoryGenerator
from feddymem.method.kmeans import FAISS_SEED_RANGE, weighted_kmeans
from feddymem.method.losses import MetricLoss
from feddymem.method.reduce import (
    ReducedMemory,
    coreset_reduce,
    kmeans_reduce,
    no_reduce,
    position_average,
)


def test_identity_generator_passes_features_through() -> None:
    gen = MemoryGenerator(in_channels=6)
    x = torch.randn(2, 6, 5, 7)
    assert torch.allclose(gen(x), x, atol=1e-6)


def test_generator_reduces_dimension_by_gamma_d_and_uses_coordinates() -> None:
    gen = MemoryGenerator(in_channels=8, gamma_d=2, init="random", seed=1)
    x = torch.zeros(1, 8, 4, 4)
    out = gen(x)
    assert out.shape == (1, 4, 4, 4)
    # Zero features, yet positions differ: the CoordConv sees where a patch is.
    assert not torch.allclose(out[..., 0, 0], out[..., 3, 3])
    again = MemoryGenerator(in_channels=8, gamma_d=2, init="random", seed=1)
    assert torch.equal(again(x), out)


def test_metric_loss_attracts_to_the_k_nearest() -> None:
    memory = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    loss = MetricLoss(k=1, j=1, radius=0.0, margin=0.1, nu=1.0)
    near, _ = loss(torch.tensor([[0.1, 0.0]]), memory)
    far, _ = loss(torch.tensor([[5.0, 5.0]]), memory)
    assert float(near) == pytest.approx(0.01, abs=1e-5)
    assert float(far) == pytest.approx(50.0, rel=1e-5)
    z = torch.tensor([[3.0, 1.0]], requires_grad=True)
    value, _ = loss(z, memory)
    value.backward()
    assert z.grad is not None and z.grad[0, 0] > 0  # the gradient points away from (0, 0)


def test_metric_loss_repulsion_pushes_hard_negatives_out_of_the_margin() -> None:
    memory = torch.tensor([[0.0], [0.1]])
    loss = MetricLoss(k=1, j=1, radius=0.0, margin=1.0, nu=1.0)
    _, parts = loss(torch.tensor([[0.0]]), memory)
    assert parts["loss_rep"] == pytest.approx(0.0)  # r^2 - D - alpha < 0 with r = 0
    loss = MetricLoss(k=1, j=1, radius=1.0, margin=0.5, nu=1.0)
    _, parts = loss(torch.tensor([[0.0]]), memory)
    assert parts["loss_rep"] == pytest.approx(1.0 - 0.01 - 0.5, abs=1e-5)


def test_metric_loss_and_gradient_equal_the_full_distance_matrix_in_float64() -> None:
    # The loss finds the K + J nearest without gradient and differentiates only their distances:
    # value and gradient must be those of the loss over all (N, C) distances, here in float64.
    g = torch.Generator().manual_seed(3)
    memory, z0 = torch.randn(700, 24, generator=g), torch.randn(300, 24, generator=g)
    loss = MetricLoss(k=3, j=3, radius=4.0, margin=0.5, nu=1e-3)
    z = z0.clone().requires_grad_()
    index = NearestNeighbors(memory)
    value, parts = loss(z, memory, index=index)
    value.backward()
    ref_z = z0.double().requires_grad_()
    sq = torch.cdist(ref_z, memory.double()).square()
    nearest = torch.topk(sq, 6, dim=1, largest=False).values
    att = torch.clamp(nearest[:, :3] - 16.0, min=0).sum(dim=1).mean()
    rep = torch.clamp(16.0 - nearest[:, 3:] - 0.5, min=0).sum(dim=1).mean()
    ref = (att + rep) / 1e-3
    ref.backward()
    assert float(rep.detach()) > 0 and float(att.detach()) > 0  # both parts are exercised
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert parts["loss_rep"] == pytest.approx(float(rep.detach()), rel=1e-5)
    assert z.grad is not None and ref_z.grad is not None
    torch.testing.assert_close(z.grad.double(), ref_z.grad, rtol=1e-4, atol=1e-6)
    # Without an index the loss builds its own; an index over other data is refused.
    assert float(loss(z0, memory)[0]) == pytest.approx(float(value.detach()), rel=1e-6)
    with pytest.raises(ValueError, match="index holds"):
        loss(z0, memory[:100], index=index)


def test_position_average_is_the_per_position_mean() -> None:
    z = torch.randn(5, 3, 4, 6)
    mem = position_average(z)
    assert mem.vectors.shape == (24, 3) and mem.n_images == 5
    assert torch.allclose(mem.vectors[7], z[:, :, 1, 1].mean(0), atol=1e-6)
    assert torch.all(mem.weights == 5)
    # Running update over equal batches gives the same memory.
    running = torch.zeros(24, 3)
    for i, batch in enumerate(z.split(1)):
        running = (i * running + batch.mean(0).permute(1, 2, 0).reshape(24, 3)) / (i + 1)
    assert torch.allclose(running, mem.vectors, atol=1e-6)


def test_position_average_with_local_kmeans_has_the_exact_size() -> None:
    z = torch.randn(4, 3, 8, 8)
    mem = position_average(z, gamma_c=4, seed=0)
    assert mem.vectors.shape[0] <= 16 and mem.vectors.shape[1] == 3
    assert float(mem.weights.sum()) == pytest.approx(64 * 4)


@pytest.mark.parametrize("size", [1, 7, 50])
def test_kmeans_reduce_size_weights_and_seed(size: int) -> None:
    z = torch.randn(6, 4, 5, 5)
    a = kmeans_reduce(z, size=size, seed=3)
    b = kmeans_reduce(z, size=size, seed=3)
    assert a.vectors.shape[0] <= size and a.vectors.shape[1] == 4
    assert float(a.weights.sum()) == pytest.approx(150)  # every patch vector counted once
    assert torch.equal(a.vectors, b.vectors)


def test_no_reduce_samples_raw_vectors() -> None:
    z = torch.randn(2, 3, 4, 4)
    mem = no_reduce(z, size=10, seed=0)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert mem.vectors.shape == (10, 3)
    assert all(any(torch.equal(v, f) for f in flat) for v in mem.vectors)


def test_weighted_kmeans_follows_the_weights() -> None:
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    centres, counts = weighted_kmeans(x, torch.tensor([1.0, 1.0, 1.0, 1.0]), k=2, seed=0)
    assert sorted(c.item() for c in centres[:, 0]) == pytest.approx([0.5, 10.5])
    assert torch.allclose(counts, torch.tensor([2.0, 2.0]))
    centres, _ = weighted_kmeans(x, torch.tensor([1.0, 9.0, 1.0, 1.0]), k=2, seed=0)
    assert min(c.item() for c in centres[:, 0]) == pytest.approx(0.9)


def test_weighted_kmeans_takes_derived_seeds_beyond_a_c_int() -> None:
    # A shadow run's round seed ((seed + 50_021) * 1_000) * 100_003 passes 2**31; faiss takes a C
    # int. Small seeds keep their clustering; a huge one clusters like its folded value.
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    big = 5_002_100_000 * 100_003
    c_big, _ = weighted_kmeans(x, None, k=10, seed=big, iterations=5)
    c_folded, _ = weighted_kmeans(x, None, k=10, seed=big % FAISS_SEED_RANGE, iterations=5)
    assert torch.equal(c_big, c_folded)
    c_small, _ = weighted_kmeans(x, None, k=10, seed=7, iterations=5)
    c_again, _ = weighted_kmeans(x, None, k=10, seed=7 + FAISS_SEED_RANGE, iterations=5)
    assert torch.equal(c_small, c_again)


def test_aggregate_memories_union_keeps_every_item_in_upload_order() -> None:
    gen = torch.Generator().manual_seed(0)
    a = ReducedMemory(vectors=torch.randn(5, 4, generator=gen), weights=torch.ones(5), n_images=1)
    b = ReducedMemory(vectors=torch.randn(3, 4, generator=gen), weights=torch.ones(3), n_images=1)
    g = aggregate_memories([a, b], num_centers=2, method="union")
    assert torch.equal(g, torch.cat([a.vectors, b.vectors]))


def test_aggregate_memories_kmeans_over_the_union() -> None:
    gen = torch.Generator().manual_seed(0)
    a = ReducedMemory(vectors=torch.randn(30, 4, generator=gen), weights=torch.ones(30), n_images=3)
    b = ReducedMemory(
        vectors=torch.randn(30, 4, generator=gen) + 5, weights=torch.ones(30), n_images=3
    )
    g1 = aggregate_memories([a, b], num_centers=10, seed=1)
    g2 = aggregate_memories([a, b], num_centers=10, seed=1)
    assert g1.shape == (10, 4) and torch.equal(g1, g2)
    # Both clients' clusters are represented.
    assert (g1.mean(1) > 2.5).any() and (g1.mean(1) < 2.5).any()


def test_aggregate_mean_needs_aligned_banks() -> None:
    a = ReducedMemory(vectors=torch.zeros(4, 2), weights=torch.full((4,), 1.0), n_images=1)
    b = ReducedMemory(vectors=torch.ones(4, 2), weights=torch.full((4,), 3.0), n_images=3)
    assert torch.allclose(
        aggregate_memories([a, b], num_centers=None, method="mean"), torch.full((4, 2), 0.75)
    )
    c = ReducedMemory(vectors=torch.ones(5, 2), weights=torch.ones(5), n_images=1)
    with pytest.raises(ValueError, match="one shape"):
        aggregate_memories([a, c], num_centers=None, method="mean")
    with pytest.raises(ValueError, match="dimension"):
        aggregate_memories([a, ReducedMemory(torch.ones(4, 3), torch.ones(4), 1)], num_centers=None)


def test_coreset_reduce_keeps_real_vectors_weights_and_rare_patterns() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 8, 10, 10, generator=gen)  # 600 patch vectors
    z[0, :, 0, 0] = 40.0  # one rare, far-away normal pattern
    mem = coreset_reduce(z, size=32, seed=0)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    assert mem.vectors.shape == (32, 8) and mem.n_images == 6
    assert float(mem.weights.sum()) == flat.shape[0]
    # Every item is a real patch vector, and the rare one is kept (k-means would blur it).
    same = (mem.vectors[:, None, :] == flat[None, :, :]).all(dim=-1)  # (32, 600)
    assert same.any(dim=1).all() and same[:, 0].any()
    # Coverage: no vector is farther from the coreset than from k-means centres of the same size.
    km = kmeans_reduce(z, size=32, seed=0)
    radius = torch.cdist(flat, mem.vectors).min(dim=1).values.max()
    assert radius <= torch.cdist(flat, km.vectors).min(dim=1).values.max()
