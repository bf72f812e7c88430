"""Behaviour of feddymem.knn: both backends equal a float64 brute force and each other."""

from __future__ import annotations

import pytest
import torch

from feddymem.knn import NearestNeighbors

BACKENDS = ("faiss", "torch")


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5])
def test_search_matches_brute_force(backend: str, k: int) -> None:
    memory, queries = randn(300, 24, seed=0), randn(70, 24, seed=1)
    dist, idx = NearestNeighbors(memory, backend=backend).search(queries, k)  # type: ignore[arg-type]
    ref = torch.cdist(queries.double(), memory.double()).topk(k, dim=1, largest=False)
    assert dist.shape == idx.shape == (70, k)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(dist.double(), ref.values, atol=1e-5, rtol=1e-6)
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())


def test_backends_agree_on_a_larger_bank() -> None:
    memory, queries = randn(3000, 152, seed=2), randn(784, 152, seed=3)
    d_f, i_f = NearestNeighbors(memory, backend="faiss").search(queries, 3)
    d_t, i_t = NearestNeighbors(memory, backend="torch").search(queries, 3)
    assert torch.equal(i_f, i_t)
    torch.testing.assert_close(d_f, d_t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_euclidean_distances(backend: str) -> None:
    memory = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    dist, idx = NearestNeighbors(memory, backend=backend).search(  # type: ignore[arg-type]
        torch.tensor([[0.0, 0.0], [6.0, 8.0]]), 2
    )
    assert idx.tolist() == [[0, 1], [2, 1]]
    assert dist.tolist() == [[0.0, 5.0], [0.0, 5.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_duplicates_of_large_vectors_are_exact(backend: str) -> None:
    # ||q||^2 ~ 1e8: the inner-product expansion alone would leave errors of order 1 here.
    memory = randn(50, 64, seed=4) + 1000.0
    queries = memory[[3, 17]].clone()
    queries[1, 0] += 0.01
    dist, idx = NearestNeighbors(memory, backend=backend).search(queries, 1)  # type: ignore[arg-type]
    assert idx[:, 0].tolist() == [3, 17]
    assert float(dist[0, 0]) == 0.0
    assert float(dist[1, 0]) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_rejected(backend: str) -> None:
    memory = randn(10, 4, seed=5)
    nn = NearestNeighbors(memory, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        nn.search(randn(3, 4, seed=6), 11)
    with pytest.raises(ValueError, match="k must be"):
        nn.search(randn(3, 4, seed=6), 0)
    with pytest.raises(ValueError, match="D=5"):
        nn.search(randn(3, 5, seed=6), 1)
    bad = randn(3, 4, seed=6)
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        nn.search(bad, 1)
    memory[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        NearestNeighbors(memory, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        NearestNeighbors(torch.zeros(0, 4), backend=backend)  # type: ignore[arg-type]


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'annoy'"):
        NearestNeighbors(randn(4, 2, seed=0), backend="annoy")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_queries_and_float64_input(backend: str) -> None:
    memory = randn(20, 8, seed=7).double()
    nn = NearestNeighbors(memory, backend=backend)  # type: ignore[arg-type]
    dist, idx = nn.search(torch.zeros(0, 8, dtype=torch.float64), 4)
    assert dist.shape == idx.shape == (0, 4)
    dist, idx = nn.search(memory[:2], 1)
    assert idx[:, 0].tolist() == [0, 1] and dist.abs().max() == 0.0


def test_faiss_threads_follow_torch() -> None:
    import faiss

    nn = NearestNeighbors(randn(100, 8, seed=8), backend="faiss")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        nn.search(randn(5, 8, seed=9), 1)
        assert faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(old)
    nn.search(randn(5, 8, seed=9), 1)
    assert faiss.omp_get_max_threads() == old
