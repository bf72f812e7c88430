"""Behaviour of feddymem.detect.knn: both backends, and the torch backend's bfloat16 screen, equal a
float64 brute force and each other."""

from __future__ import annotations

import pytest
import torch

from feddymem.detect import knn
from feddymem.detect.knn import NearestNeighbors, native_bfloat16

# "torch" runs in float32 here; "screen" is the torch backend through its bfloat16 screen (on
# CPUs without bfloat16 hardware PyTorch emulates it: slower, the same neighbours).
BACKENDS = ("faiss", "torch", "screen")


def index(memory: torch.Tensor, variant: str) -> NearestNeighbors:
    if variant == "screen":
        return NearestNeighbors(memory, backend="torch", screen=True)
    return NearestNeighbors(memory, backend=variant, screen=False)  # type: ignore[arg-type]


def assert_brute_force(
    nn: NearestNeighbors, queries: torch.Tensor, memory: torch.Tensor, k: int, atol: float = 1e-5
) -> torch.Tensor:
    """The search's neighbours are a float64 brute force's, its distances close; the indices."""
    dist, idx = nn.search(queries, k)
    ref = torch.cdist(queries.double(), memory.double()).topk(k, dim=1, largest=False)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(dist.double(), ref.values, atol=atol, rtol=1e-6)
    return idx


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5])
def test_search_matches_brute_force(backend: str, k: int) -> None:
    memory, queries = randn(300, 24, seed=0), randn(70, 24, seed=1)
    dist, idx = index(memory, backend).search(queries, k)  # type: ignore[arg-type]
    ref = torch.cdist(queries.double(), memory.double()).topk(k, dim=1, largest=False)
    assert dist.shape == idx.shape == (70, k)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(dist.double(), ref.values, atol=1e-5, rtol=1e-6)
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())


def test_backends_agree_on_a_larger_bank() -> None:
    memory, queries = randn(3000, 152, seed=2), randn(784, 152, seed=3)
    d_f, i_f = NearestNeighbors(memory, backend="faiss").search(queries, 3)
    d_t, i_t = index(memory, "torch").search(queries, 3)
    d_s, i_s = index(memory, "screen").search(queries, 3)
    assert torch.equal(i_f, i_t) and torch.equal(i_f, i_s)
    torch.testing.assert_close(d_f, d_t)
    torch.testing.assert_close(d_f, d_s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_euclidean_distances(backend: str) -> None:
    memory = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    dist, idx = index(memory, backend).search(  # type: ignore[arg-type]
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
    dist, idx = index(memory, backend).search(queries, 1)  # type: ignore[arg-type]
    assert idx[:, 0].tolist() == [3, 17]
    assert float(dist[0, 0]) == 0.0
    assert float(dist[1, 0]) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_rejected(backend: str) -> None:
    memory = randn(10, 4, seed=5)
    nn = index(memory, backend)
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
        index(memory, backend)
    with pytest.raises(ValueError, match="non-empty"):
        index(torch.zeros(0, 4), backend)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'annoy'"):
        NearestNeighbors(randn(4, 2, seed=0), backend="annoy")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_queries_and_float64_input(backend: str) -> None:
    memory = randn(20, 8, seed=7).double()
    nn = index(memory, backend)
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


def test_screen_is_on_by_default_where_the_cpu_has_bfloat16() -> None:
    memory = randn(10, 4, seed=10)
    assert NearestNeighbors(memory).screen == native_bfloat16()
    assert not NearestNeighbors(memory, backend="faiss", screen=True).screen


@pytest.mark.parametrize("k", [1, 2])
def test_screen_finds_the_nearest_of_near_ties(k: int) -> None:
    # Queries halfway between two rows, nudged by 1e-4 of their distance towards one of them:
    # bfloat16 scores (8 significant bits) cannot tell these apart; the screen's error bound
    # keeps both rows as candidates and the float32 distances choose.
    memory = randn(400, 64, seed=11) * 3.0
    a, b = torch.arange(0, 200, 2), torch.arange(1, 200, 2)
    towards = torch.rand(len(a), generator=torch.Generator().manual_seed(12)) < 0.5
    near, far = torch.where(towards, a, b), torch.where(towards, b, a)
    queries = 0.5 * (memory[a] + memory[b])
    queries += 1e-4 * (memory[near] - memory[far])
    nn = index(memory, "screen")
    idx = assert_brute_force(nn, queries, memory, k)
    assert idx[:, 0].tolist() == near.tolist()
    # both rows of every tie stayed candidates, counted over every query
    assert nn.screened_queries == len(queries)
    assert nn.screen_candidates >= 2 * len(queries)
    assert nn.screen_fallbacks == 0  # the screen itself chose, not the float32 fallback


@pytest.mark.parametrize("variant", ["torch", "screen"])
def test_offset_clustered_data_matches_brute_force(variant: str) -> None:
    # Clusters far from the origin (squared norms ~4e6, neighbours ~60 apart): without centring
    # on the bank's mean, float32 cancellation in ||m||^2 - 2 q.m alone misorders neighbours.
    centres = randn(8, 48, seed=13) * 5.0 + 300.0
    memory = (centres.repeat_interleave(100, dim=0) + randn(800, 48, seed=14)).contiguous()
    queries = centres.repeat_interleave(40, dim=0) + randn(320, 48, seed=15)
    nn = index(memory, variant)
    assert_brute_force(nn, queries, memory, 3, atol=1e-4)
    assert nn.screen_fallbacks == 0


def test_screen_with_every_row_a_candidate() -> None:
    # Rows on a sphere around the queries: all within the bound of the nearest, so every row is
    # a candidate and the float32 distances alone choose (in pieces, with a small cap).
    directions = randn(600, 32, seed=16)
    memory = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    queries = 1e-3 * randn(12, 32, seed=17)
    nn = index(memory, "screen")
    assert_brute_force(nn, queries, memory, 2)
    assert nn.screen_fallbacks == 0


def test_screen_falls_back_on_huge_norms() -> None:
    memory = randn(64, 8, seed=18) * 1e15
    nn = index(memory, "screen")
    _, idx = nn.search(memory[:5] * 1.0001, 1)
    assert idx[:, 0].tolist() == list(range(5))
    assert nn.screen_fallbacks >= 1


def test_screen_chunks_cover_every_query(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks: several per search, the last a partial one.
    monkeypatch.setattr(knn, "_CHUNK_FLOATS", 64 * 37)
    memory, queries = randn(100, 16, seed=19), randn(301, 16, seed=20)
    assert_brute_force(index(memory, "screen"), queries, memory, 2)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("kind", ["spread", "near-copies", "queries-near-rows"])
def test_screen_equals_float64_across_scales_and_layouts(scale: float, kind: str) -> None:
    # Banks far from the origin, clustered near-copies, queries just off memory rows, and
    # sizes that leave a partial block of 64: the screen's bound must hold in all of them.
    g = torch.Generator().manual_seed(21)
    memory = torch.randn(333, 40, generator=g) * scale + 100.0 * scale
    if kind == "near-copies":
        memory = memory[torch.randint(0, 30, (333,), generator=g)]
        memory = memory + 1e-3 * scale * torch.randn(333, 40, generator=g)
    queries = torch.randn(257, 40, generator=g) * scale + 100.0 * scale
    if kind == "queries-near-rows":
        queries = memory[torch.randint(0, 333, (257,), generator=g)]
        queries = queries + 1e-2 * scale * torch.randn(257, 40, generator=g)
    nn = index(memory, "screen")
    for k in (1, 4):
        _, idx = nn.search(queries, k)
        exact = torch.cdist(queries.double(), memory.double())
        # the rows found are as near as the float64 k nearest (near-copies may tie)
        ref = exact.topk(k, dim=1, largest=False).values
        torch.testing.assert_close(exact.gather(1, idx), ref, rtol=1e-6, atol=0.0)
    assert nn.screen_fallbacks == 0
