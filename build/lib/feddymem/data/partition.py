"""Splitting a pool of samples (one source or a mixture of several) across federated clients.

Two schemes, both seeded and pure (no I/O, no Flower):

* `iid`: a seeded shuffle cut into near-equal shares.
* `dirichlet`: the usual non-IID split. For every group g (a sample's ``label`` or its
  ``source``) draw client proportions q_g ~ Dir(alpha * 1_K) and deal g's samples out by them.
  Small alpha gives each client few groups (strong skew); large alpha approaches `iid`.

Every client must end with at least one training normal (``label == 0``): a client without one
could not build a memory. `dirichlet` redraws (seeded, up to ``max_draws`` times) until that
holds and raises `PartitionError` otherwise; `iid` raises when there are fewer normals than
clients. Each returned share keeps the input order.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Literal, Protocol, TypeVar

import numpy as np

__all__ = ["GroupBy", "PartitionError", "Partitionable", "dirichlet", "group_shares", "iid"]

log = logging.getLogger(__name__)

GroupBy = Literal["label", "source"]


class Partitionable(Protocol):
    """What a partition reads from a sample (``feddymem.data.Sample`` has both)."""

    @property
    def label(self) -> int: ...

    @property
    def source(self) -> str: ...


S = TypeVar("S", bound=Partitionable)


class PartitionError(ValueError):
    """The samples cannot be split as asked (too few normals, bad options)."""


def _check_common(samples: Sequence[Partitionable], num_clients: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise PartitionError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    normals = sum(1 for s in samples if s.label == 0)
    if normals < num_clients:
        raise PartitionError(
            f"{num_clients} clients need at least one training normal each, but the pool holds "
            f"{normals} normal sample(s) (of {len(samples)})"
        )


def _shares(samples: Sequence[S], assignment: np.ndarray, num_clients: int) -> list[list[S]]:
    out: list[list[S]] = [[] for _ in range(num_clients)]
    for index, client in enumerate(assignment.tolist()):
        out[client].append(samples[index])
    return out


def _clients_without_normal(
    samples: Sequence[Partitionable], assignment: np.ndarray, k: int
) -> list[int]:
    has_normal = np.zeros(k, dtype=bool)
    for index, sample in enumerate(samples):
        if sample.label == 0:
            has_normal[assignment[index]] = True
    return [int(c) for c in np.flatnonzero(~has_normal)]


def iid(samples: Sequence[S], *, num_clients: int, seed: int) -> list[list[S]]:
    """Split into `num_clients` near-equal random shares (sizes differ by at most one).

    Normals and anomalies (if any) are dealt separately, so every client gets its share of
    normals. Seeded: the same input and seed give the same shares.
    """
    _check_common(samples, num_clients)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(samples), dtype=np.int64)
    offset = 0
    for label in sorted({s.label for s in samples}):
        idx = np.array([i for i, s in enumerate(samples) if s.label == label], dtype=np.int64)
        idx = idx[rng.permutation(idx.size)]
        # Rotate the starting client so remainders do not always land on client 0.
        clients = (np.arange(idx.size) + offset) % num_clients
        assignment[idx] = clients
        offset = (offset + idx.size) % num_clients
    return _shares(samples, assignment, num_clients)


def dirichlet(
    samples: Sequence[S],
    *,
    num_clients: int,
    alpha: float,
    by: GroupBy,
    seed: int,
    max_draws: int = 1000,
) -> list[list[S]]:
    """Non-IID split: each group's samples dealt out by proportions q_g ~ Dir(alpha * 1_K).

    Args:
        samples: The pool (e.g. the training normals of several sources).
        num_clients: K.
        alpha: Concentration > 0; smaller is more skewed.
        by: Group samples by their ``label`` or their ``source``.
        seed: Seed of the draws.
        max_draws: Redraws allowed until every client holds a training normal.

    Raises:
        PartitionError: bad options, fewer normals than clients, or no draw in `max_draws`
            left every client with a normal (raise alpha or lower num_clients).
    """
    _check_common(samples, num_clients)
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
        raise PartitionError(f"alpha must be a number > 0, got {alpha!r}")
    if by not in ("label", "source"):
        raise PartitionError(f"by must be 'label' or 'source', got {by!r}")
    keys: list[Hashable] = [getattr(s, by) for s in samples]
    groups = sorted(set(keys), key=repr)
    members = {
        g: np.array([i for i, k in enumerate(keys) if k == g], dtype=np.int64) for g in groups
    }
    rng = np.random.default_rng(seed)
    for draw in range(max_draws):
        assignment = np.empty(len(samples), dtype=np.int64)
        for g in groups:
            idx = members[g][rng.permutation(members[g].size)]
            q = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(q)[:-1] * idx.size).round().astype(np.int64)
            for client, part in enumerate(np.split(idx, cuts)):
                assignment[part] = client
        empty = _clients_without_normal(samples, assignment, num_clients)
        if not empty:
            if draw:
                log.debug(
                    "dirichlet(alpha=%s): %d redraw(s) to give every client a normal", alpha, draw
                )
            return _shares(samples, assignment, num_clients)
    raise PartitionError(
        f"dirichlet(alpha={alpha}, by={by!r}) left client(s) {empty} without a training normal "
        f"in {max_draws} draws over {len(samples)} samples in {len(groups)} group(s); raise "
        f"alpha or lower num_clients"
    )


def group_shares(
    shares: Sequence[Sequence[Partitionable]], *, by: GroupBy
) -> list[dict[str, float]]:
    """Per client, the fraction of its samples in each group (for reports and skew checks)."""
    out: list[dict[str, float]] = []
    for share in shares:
        counts: dict[str, int] = {}
        for sample in share:
            key = str(getattr(sample, by))
            counts[key] = counts.get(key, 0) + 1
        total = max(1, len(share))
        out.append({k: v / total for k, v in sorted(counts.items())})
    return out
