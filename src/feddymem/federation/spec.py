"""The federation spec: one TOML file, parsed once into frozen dataclasses and validated.

```toml
[federation]
name = "elpv-two-clients"   # also names the clients' state folders
rounds = 5                   # R: training rounds after round 0
min_clients = 2              # fewer surviving clients fail the run
seed = 0                     # partition, server k-means; default [model].seed
round_timeout_s = 900        # a client silent this long in a round is dropped
connect_timeout_s = 120      # (optional) wait this long for the clients to connect
max_memory_items = 100000    # (optional) larger uploads are rejected

[model]                      # any FedDyMemConfig option; unknown keys are errors
image_size = 224

[[clients]]                  # either explicit clients ...
name = "mono"
data = ["../data/elpv-mono"] # MVTec-layout roots; several = a mixture; relative to this file
# node_id = 1234567890       # (deployment) the node id `flwr supernode register` gave the
                             # site's key: only that node may answer as "mono"

[partition]                  # ... or clients generated from a pool of sources
sources = ["../data/elpv-mono", "../data/elpv-poly"]
num_clients = 4
scheme = "dirichlet"         # or "iid"
alpha = 0.5                  # dirichlet only
by = "source"                # dirichlet only: "source" or "label"
```

A partition splits the sources' *training normals* across clients (`feddymem.data.partition`). Each
client is then evaluated on the full test split of every source it holds training images from:
test sets are not partitioned, because a client's share of a test split could hold no anomaly
(AUROC undefined) and would make small, noisy scores; sharing test images across clients leaks
nothing, no client trains on them.

In a deployment the sites bring their own data (node config), so `[[clients]]` there may list
only the expected names and omit `data`. A client's samples are loaded by
`feddymem.federation.client_data`.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddymem.config import ConfigError, FedDyMemConfig, from_dict, to_dict

__all__ = [
    "ClientSpec",
    "FederationSettings",
    "FederationSpec",
    "PartitionSpec",
    "SpecError",
    "check_client_name",
    "load_spec",
    "parse_spec",
]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOP_KEYS = frozenset({"federation", "model", "clients", "partition"})


class SpecError(ValueError):
    """A federation spec is missing a key, has an unknown key or a value out of range."""


@dataclass(frozen=True, kw_only=True)
class FederationSettings:
    """The ``[federation]`` table."""

    name: str
    rounds: int
    min_clients: int
    seed: int = 0
    round_timeout_s: float = 900.0
    connect_timeout_s: float = 120.0
    max_memory_items: int = 100_000


@dataclass(frozen=True, kw_only=True)
class ClientSpec:
    """One ``[[clients]]`` entry: a name and its data roots (absolute; empty in deployment).

    `node_id` (deployment with SuperNode authentication): the node id the SuperLink gave the
    site's public key at ``flwr supernode register``; only that node may answer as `name`.
    `public`: roots of public normal images of the site's kind (their ``train/good``), the
    codebook of the public vote (``[model] public_vote``, privacy/public_vote.py).
    """

    name: str
    data: tuple[Path, ...] = ()
    node_id: int | None = None
    public: tuple[Path, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PartitionSpec:
    """The ``[partition]`` table: clients generated from a pool of sources."""

    sources: tuple[Path, ...]
    num_clients: int
    scheme: str  # "iid" | "dirichlet"
    alpha: float | None = None
    by: str = "source"  # "source" | "label"


@dataclass(frozen=True, kw_only=True)
class FederationSpec:
    """A whole federation: settings, the model config sent to every client, and the clients."""

    path: Path
    federation: FederationSettings
    model: FedDyMemConfig
    clients: tuple[ClientSpec, ...] = ()
    partition: PartitionSpec | None = None

    @property
    def num_clients(self) -> int:
        """K, the number of clients the federation expects."""
        return self.partition.num_clients if self.partition else len(self.clients)

    @property
    def bound_nodes(self) -> dict[str, int]:
        """Client name -> the node id it is bound to (clients with a ``node_id`` only)."""
        return {c.name: c.node_id for c in self.clients if c.node_id is not None}

    @property
    def client_names(self) -> tuple[str, ...]:
        """Client names in spec order (``client-<i>`` for a partition)."""
        if self.partition is not None:
            return tuple(f"client-{i}" for i in range(self.partition.num_clients))
        return tuple(c.name for c in self.clients)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (written next to every result)."""
        out: dict[str, Any] = {
            "federation": {
                "name": self.federation.name,
                "rounds": self.federation.rounds,
                "min_clients": self.federation.min_clients,
                "seed": self.federation.seed,
                "round_timeout_s": self.federation.round_timeout_s,
                "connect_timeout_s": self.federation.connect_timeout_s,
                "max_memory_items": self.federation.max_memory_items,
            },
            "model": to_dict(self.model),
        }
        if self.partition is not None:
            out["partition"] = {
                "sources": [str(p) for p in self.partition.sources],
                "num_clients": self.partition.num_clients,
                "scheme": self.partition.scheme,
                "alpha": self.partition.alpha,
                "by": self.partition.by,
            }
        else:
            out["clients"] = [
                {"name": c.name, "data": [str(p) for p in c.data]}
                | ({} if c.node_id is None else {"node_id": c.node_id})
                | ({"public": [str(p) for p in c.public]} if c.public else {})
                for c in self.clients
            ]
        return out


# ----------------------------------------------------------------------------------------------
# parsing


def load_spec(path: str | Path) -> FederationSpec:
    """Read and validate a federation spec TOML; errors name the file and the key."""
    file = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{file}: federation spec not found") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{file}: not valid TOML: {err}") from None
    return parse_spec(raw, path=file)


def parse_spec(raw: Mapping[str, Any], *, path: Path) -> FederationSpec:
    """Validate a spec read from TOML; relative data paths resolve against `path`'s folder."""
    where = str(path)
    base = path.parent
    _no_unknown(raw, _TOP_KEYS, where, "")
    fed = _federation(_table(raw, "federation", where, required=True), where)
    model_raw = dict(_table(raw, "model", where, required=False))
    model_raw.setdefault("seed", fed.seed)
    try:
        model = from_dict(FedDyMemConfig, model_raw, where=f"{where} [model]")
    except ConfigError as err:
        raise SpecError(str(err)) from None
    except TypeError as err:  # a value of the wrong type deep in a dataclass
        raise SpecError(f"{where} [model]: {err}") from None

    has_clients = "clients" in raw
    has_partition = "partition" in raw
    if has_clients == has_partition:
        raise SpecError(
            f"{where}: give either [[clients]] entries or a [partition] table (exactly one)"
        )
    clients: tuple[ClientSpec, ...] = ()
    partition: PartitionSpec | None = None
    if has_clients:
        clients = _clients(raw["clients"], base, where)
    else:
        partition = _partition(_table(raw, "partition", where, required=True), base, where)
    spec = FederationSpec(
        path=path, federation=fed, model=model, clients=clients, partition=partition
    )
    if fed.min_clients > spec.num_clients:
        raise SpecError(
            f"{where} [federation] min_clients = {fed.min_clients} exceeds the {spec.num_clients} "
            f"client(s) the spec defines"
        )
    return spec


def check_client_name(name: object, where: str) -> str:
    """A client name is also a folder name: letters, digits, '_', '.', '-' (max 64)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(
            f"{where}: client name must be 1-64 letters, digits, '_', '.' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name


def _table(raw: Mapping[str, Any], key: str, where: str, *, required: bool) -> Mapping[str, Any]:
    if key not in raw:
        if required:
            raise SpecError(f"{where}: missing [{key}] table")
        return {}
    value = raw[key]
    if not isinstance(value, dict):
        raise SpecError(f"{where}: '{key}' must be a table [{key}]")
    return value


def _no_unknown(table: Mapping[str, Any], known: frozenset[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        label = f" [{prefix}]" if prefix else ""
        raise SpecError(f"{where}{label}: unknown key(s) {unknown}; known: {sorted(known)}")


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    *,
    default: Any = ...,
) -> Any:
    if key not in table:
        if default is ...:
            raise SpecError(f"{where}: missing key '{key}'")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise SpecError(f"{where}: '{key}' must be {_kind_name(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise SpecError(f"{where}: '{key}' must be {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds: Sequence[type]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _federation(table: Mapping[str, Any], where: str) -> FederationSettings:
    w = f"{where} [federation]"
    known = frozenset(
        {
            "name",
            "rounds",
            "min_clients",
            "seed",
            "round_timeout_s",
            "connect_timeout_s",
            "max_memory_items",
        }
    )
    _no_unknown(table, known, where, "federation")
    name = _get(table, "name", str, w)
    if not _NAME_RE.match(name):
        raise SpecError(f"{w}: 'name' must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
    rounds = _get(table, "rounds", int, w)
    if rounds < 0:
        raise SpecError(f"{w}: 'rounds' must be >= 0, got {rounds}")
    min_clients = _get(table, "min_clients", int, w)
    if min_clients < 1:
        raise SpecError(f"{w}: 'min_clients' must be >= 1, got {min_clients}")
    seed = _get(table, "seed", int, w, default=0)
    round_timeout = float(_get(table, "round_timeout_s", (int, float), w, default=900.0))
    if round_timeout <= 0:
        raise SpecError(f"{w}: 'round_timeout_s' must be > 0, got {round_timeout}")
    connect_timeout = float(_get(table, "connect_timeout_s", (int, float), w, default=120.0))
    if connect_timeout <= 0:
        raise SpecError(f"{w}: 'connect_timeout_s' must be > 0, got {connect_timeout}")
    max_items = _get(table, "max_memory_items", int, w, default=100_000)
    if max_items < 1:
        raise SpecError(f"{w}: 'max_memory_items' must be >= 1, got {max_items}")
    return FederationSettings(
        name=name,
        rounds=rounds,
        min_clients=min_clients,
        seed=seed,
        round_timeout_s=round_timeout,
        connect_timeout_s=connect_timeout,
        max_memory_items=max_items,
    )


def _paths(value: Any, base: Path, where: str, key: str) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: '{key}' must be a non-empty list of paths, got {value!r}")
    out = []
    for item in value:
        p = Path(item).expanduser()
        out.append((p if p.is_absolute() else base / p).resolve())
    if len(set(out)) != len(out):
        raise SpecError(f"{where}: '{key}' lists a path twice")
    return tuple(out)


def _clients(value: Any, base: Path, where: str) -> tuple[ClientSpec, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: 'clients' must be a non-empty array of [[clients]] tables")
    out: list[ClientSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        w = f"{where} clients[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{w}: must be a table")
        _no_unknown(entry, frozenset({"name", "data", "node_id", "public"}), where, f"clients[{i}]")
        name = check_client_name(_get(entry, "name", str, w), f"{w} name")
        if name in seen:
            raise SpecError(f"{w}: client name {name!r} is used twice")
        seen.add(name)
        data = _paths(entry["data"], base, w, "data") if "data" in entry else ()
        node_id = _get(entry, "node_id", int, w, default=None)
        if node_id is not None and node_id < 0:
            raise SpecError(f"{w}: 'node_id' must be >= 0, got {node_id}")
        public = _paths(entry["public"], base, w, "public") if "public" in entry else ()
        out.append(ClientSpec(name=name, data=data, node_id=node_id, public=public))
    return tuple(out)


def _partition(table: Mapping[str, Any], base: Path, where: str) -> PartitionSpec:
    w = f"{where} [partition]"
    _no_unknown(
        table, frozenset({"sources", "num_clients", "scheme", "alpha", "by"}), where, "partition"
    )
    sources = _paths(_get(table, "sources", list, w), base, w, "sources")
    names = [p.name for p in sources]
    if len(set(names)) != len(names):
        raise SpecError(
            f"{w}: 'sources' folders must have distinct names (they name the sources): {names}"
        )
    num_clients = _get(table, "num_clients", int, w)
    if num_clients < 1:
        raise SpecError(f"{w}: 'num_clients' must be >= 1, got {num_clients}")
    scheme = _get(table, "scheme", str, w)
    if scheme not in ("iid", "dirichlet"):
        raise SpecError(f"{w}: 'scheme' must be 'iid' or 'dirichlet', got {scheme!r}")
    alpha: float | None = None
    by = "source"
    if scheme == "dirichlet":
        alpha = float(_get(table, "alpha", (int, float), w))
        if alpha <= 0:
            raise SpecError(f"{w}: 'alpha' must be > 0, got {alpha}")
        by = _get(table, "by", str, w, default="source")
        if by not in ("source", "label"):
            raise SpecError(f"{w}: 'by' must be 'source' or 'label', got {by!r}")
    else:
        for key in ("alpha", "by"):
            if key in table:
                raise SpecError(f"{w}: '{key}' applies to scheme = 'dirichlet' only")
    return PartitionSpec(
        sources=sources, num_clients=num_clients, scheme=scheme, alpha=alpha, by=by
    )
