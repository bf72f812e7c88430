"""Partitioning samples across clients: seed stability, disjointness, coverage, skew vs alpha."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feddymem.data import Sample
from feddymem.data.partition import PartitionError, dirichlet, group_shares, iid


def _pool(counts: dict[str, int], *, anomalies: int = 0) -> list[Sample]:
    samples = [
        Sample(path=Path(f"{src}/{i:04d}.png"), label=0, defect="good", source=src)
        for src, n in counts.items()
        for i in range(n)
    ]
    samples += [
        Sample(path=Path(f"bad/{i:04d}.png"), label=1, defect="crack", source="bad")
        for i in range(anomalies)
    ]
    return samples


def _paths(shares: list[list[Sample]]) -> list[list[str]]:
    return [[str(s.path) for s in share] for share in shares]


def _check_cover(pool: list[Sample], shares: list[list[Sample]]) -> None:
    flat = [s.path for share in shares for s in share]
    assert len(flat) == len(set(flat)), "a sample went to two clients"
    assert set(flat) == {s.path for s in pool}, "a sample went nowhere"
    assert all(any(s.label == 0 for s in share) for share in shares)


def test_iid_is_seed_stable_disjoint_covering_and_balanced() -> None:
    pool = _pool({"mono": 37, "poly": 23}, anomalies=5)
    a = iid(pool, num_clients=4, seed=3)
    b = iid(pool, num_clients=4, seed=3)
    c = iid(pool, num_clients=4, seed=4)
    assert _paths(a) == _paths(b)
    assert _paths(a) != _paths(c)
    _check_cover(pool, a)
    normals = [sum(s.label == 0 for s in share) for share in a]
    assert max(normals) - min(normals) <= 1
    # order within a share follows the input order
    for share in a:
        idx = [pool.index(s) for s in share]
        assert idx == sorted(idx)


def test_dirichlet_is_seed_stable_disjoint_and_covering() -> None:
    pool = _pool({"mono": 60, "poly": 40})
    a = dirichlet(pool, num_clients=4, alpha=0.5, by="source", seed=1)
    b = dirichlet(pool, num_clients=4, alpha=0.5, by="source", seed=1)
    assert _paths(a) == _paths(b)
    assert _paths(a) != _paths(dirichlet(pool, num_clients=4, alpha=0.5, by="source", seed=2))
    _check_cover(pool, a)


def _skew(shares: list[list[Sample]], pool: list[Sample]) -> float:
    """Mean total-variation distance between a client's source mix and the pool's."""
    overall = group_shares([pool], by="source")[0]
    tv = []
    for mix in group_shares(shares, by="source"):
        keys = set(overall) | set(mix)
        tv.append(0.5 * sum(abs(mix.get(k, 0.0) - overall.get(k, 0.0)) for k in keys))
    return float(np.mean(tv))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    pool = _pool({"a": 80, "b": 80, "c": 80})
    skews = {
        alpha: np.mean(
            [
                _skew(dirichlet(pool, num_clients=4, alpha=alpha, by="source", seed=s), pool)
                for s in range(10)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[100.0] < 0.1
    assert skews[0.1] > 0.4


def test_dirichlet_by_label_keeps_normals_with_every_client() -> None:
    pool = _pool({"mono": 40}, anomalies=12)
    shares = dirichlet(pool, num_clients=3, alpha=0.3, by="label", seed=0)
    _check_cover(pool, shares)


def test_too_few_normals_is_a_clear_error() -> None:
    pool = _pool({"mono": 2}, anomalies=10)
    with pytest.raises(PartitionError, match="at least one training normal"):
        iid(pool, num_clients=3, seed=0)
    with pytest.raises(PartitionError, match="at least one training normal"):
        dirichlet(pool, num_clients=3, alpha=1.0, by="source", seed=0)


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    # One normal per client and a very skewed draw: almost never feasible in one draw.
    pool = _pool({"a": 3})
    with pytest.raises(PartitionError, match="raise alpha"):
        dirichlet(pool, num_clients=3, alpha=0.001, by="source", seed=0, max_draws=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 0, "alpha": 1.0, "by": "source"}, "num_clients"),
        ({"num_clients": 2, "alpha": 0.0, "by": "source"}, "alpha"),
        ({"num_clients": 2, "alpha": 1.0, "by": "defect"}, "by must be"),
    ],
)
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PartitionError, match=match):
        dirichlet(_pool({"a": 10}), seed=0, **kwargs)  # type: ignore[arg-type]
