"""A client's data: its training normals and test images, from the federation spec (a
simulation: explicit roots or its share of a partition) or from a site's own roots (a
deployment's node config)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddymem.data import Sample, scan
from feddymem.data.partition import dirichlet, iid
from feddymem.federation.spec import FederationSpec, SpecError

__all__ = ["ClientData", "describe_clients", "load_client_data", "load_site_data"]


@dataclass(frozen=True)
class ClientData:
    """One client's samples: training normals and the test set it is evaluated on."""

    name: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    sources: tuple[str, ...]
    public: tuple[Sample, ...] = ()  # public normals (the public vote's codebook)


def load_site_data(name: str, roots: Sequence[Path], *, public: Sequence[Path] = ()) -> ClientData:
    """A client's data from its roots: the union of their train and test splits; the
    training normals of the `public` roots as its public images."""
    if not roots:
        raise SpecError(f"client {name!r}: no data roots given")
    train: list[Sample] = []
    test: list[Sample] = []
    sources: list[str] = []
    for root in roots:
        split = scan(root)
        train.extend(split.train)
        test.extend(split.test)
        sources.append(split.name)
    public_normals = tuple(s for root in public for s in scan(root).train if s.label == 0)
    return ClientData(
        name=name,
        train=tuple(train),
        test=tuple(test),
        sources=tuple(sources),
        public=public_normals,
    )


def load_client_data(spec: FederationSpec, index: int) -> ClientData:
    """The data of client `index` (0-based, spec order) of a simulation.

    Raises SpecError when the client has no data in the spec, DataError when a root is unusable,
    PartitionError when the partition cannot give every client a training normal.
    """
    names = spec.client_names
    if not 0 <= index < len(names):
        raise SpecError(f"{spec.path}: no client #{index}; the spec defines {len(names)}")
    if spec.partition is None:
        client = spec.clients[index]
        if not client.data:
            raise SpecError(
                f"{spec.path} clients[{index}] ({client.name}): 'data' is required to run it here"
            )
        return load_site_data(client.name, client.data, public=client.public)
    part = spec.partition
    splits = [scan(root) for root in part.sources]
    pool = [s for split in splits for s in split.train]
    if part.scheme == "iid":
        shares = iid(pool, num_clients=part.num_clients, seed=spec.federation.seed)
    else:
        assert part.alpha is not None
        shares = dirichlet(
            pool,
            num_clients=part.num_clients,
            alpha=part.alpha,
            by="label" if part.by == "label" else "source",
            seed=spec.federation.seed,
        )
    mine = shares[index]
    held = {s.source for s in mine}
    test = tuple(s for split in splits if split.name in held for s in split.test)
    return ClientData(
        name=names[index],
        train=tuple(mine),
        test=test,
        sources=tuple(split.name for split in splits if split.name in held),
    )


def describe_clients(spec: FederationSpec) -> list[dict[str, Any]]:
    """Per client: name, sources, training and test counts (for results.json); needs the data."""
    out = []
    for i in range(spec.num_clients):
        data = load_client_data(spec, i)
        out.append(
            {
                "name": data.name,
                "sources": list(data.sources),
                "n_train": len(data.train),
                "n_test": len(data.test),
                "n_test_anomalous": sum(1 for s in data.test if s.label == 1),
            }
        )
    return out
