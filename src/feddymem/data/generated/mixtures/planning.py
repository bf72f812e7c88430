"""Planning a mixture: which items of each source's pools every client gets, without reuse."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import ROLES, MixtureRecipe, Role, ScaleSizes
from feddymem.data.generated.mixtures.sources import Source
from feddymem.data.generated.protocols import Protocol
from feddymem.data.generated.protocols import split_count as _split_count


@dataclass(frozen=True)
class Assignment:
    """Items of one (client, source, role): positions in the pool's dealing order."""

    client: str
    source: str
    role: Role
    indices: tuple[int, ...]


def stable_key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _wanted(
    recipe: MixtureRecipe, sizes: ScaleSizes, protocol: Protocol
) -> dict[tuple[str, str, Role], int]:
    """(client, source, role) -> images dealt (before few-normals keeps a prefix of train)."""
    wanted: dict[tuple[str, str, Role], int] = {}
    for index, client in enumerate(recipe.clients):
        for role in ROLES:
            shares = (protocol.train_shares if role == "train" else protocol.test_shares)(
                index, client.shares, recipe.sources
            )
            split = _split_count(sizes.of(role), [x for _, x in shares])
            for (source_name, _), n in zip(shares, split, strict=True):
                wanted[(client.name, source_name, role)] = n
    return wanted


def plan_assignments(
    recipe: MixtureRecipe,
    sizes: ScaleSizes,
    sources: Mapping[str, Source],
    seed: int,
    protocol: Protocol | None = None,
) -> list[Assignment]:
    """Deal every pool's items to the clients, in order (role, client), without reuse.

    few-normals deals as the standard protocol (so test splits are identical) and keeps the
    first k training normals of each client."""
    protocol = protocol or Protocol()
    wanted = _wanted(recipe, sizes, protocol)
    kept = {c.name: protocol.kept_train(c.shares) for c in recipe.clients}

    assignments: list[Assignment] = []
    for source_name in recipe.sources:
        source = sources[source_name]
        cursors: dict[str, int] = {}
        orders: dict[str, np.ndarray] = {}
        for role in ROLES:
            pool = source.pool_of(role)
            need = sum(
                wanted.get((c.name, source_name, r), 0)
                for c in recipe.clients
                for r in ROLES
                if source.pool_of(r) == pool
            )
            size = source.pool_size(pool)
            if pool not in orders:
                if size is None:
                    orders[pool] = np.arange(need)
                else:
                    if need > size:
                        raise MixtureError(
                            f"mixture {recipe.name!r}: source {source_name!r} pool {pool!r} "
                            f"holds {size} images, the clients need {need}"
                        )
                    rng = np.random.default_rng([seed, stable_key(source_name), stable_key(pool)])
                    orders[pool] = rng.permutation(size)
                cursors[pool] = 0
            for client in recipe.clients:
                n = wanted.get((client.name, source_name, role), 0)
                if n == 0:
                    continue
                start = cursors[pool]
                picked = tuple(int(i) for i in orders[pool][start : start + n])
                cursors[pool] = start + n
                keep = kept[client.name]
                if role == "train" and keep is not None:
                    picked = picked[: keep.get(source_name, 0)]
                    if not picked:
                        continue
                assignments.append(Assignment(client.name, source_name, role, picked))
    return assignments
