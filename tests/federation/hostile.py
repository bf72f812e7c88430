"""Hostile uploads for the wire fuzzer: seeded, each one breaking at least one rule.

`hostile_upload(rng, limits, name)` returns the content of a ``train`` reply (client record,
memory, memory-info) and the rule it breaks. Every category is outside the upload limits or the
wire format by construction, so the server must refuse each one; `honest_upload` is inside.
Shared by tests/federation/test_wire_fuzz.py and benchmarks/wire_fuzz.py.
"""

from __future__ import annotations

import io
import pickle
import uuid
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from feddymem.federation import wire
from feddymem.federation.limits import UploadLimits

__all__ = ["CATEGORIES", "FuzzGrid", "fuzz_spec", "honest_upload", "hostile_upload"]


def _content(
    name: str,
    vectors: np.ndarray | Array,
    weights: np.ndarray | Array,
    n_images: object = 3,
) -> RecordDict:
    arrays = {
        "vectors": vectors
        if isinstance(vectors, Array)
        else Array(np.require(vectors, requirements="C")),
        "weights": weights
        if isinstance(weights, Array)
        else Array(np.require(weights, requirements="C")),
    }
    return RecordDict(
        {
            wire.CLIENT: ConfigRecord({"name": name}),
            wire.MEMORY: ArrayRecord(arrays),
            wire.MEMORY_INFO: ConfigRecord({"n-images": n_images}),  # type: ignore[dict-item]
            wire.METRICS: MetricRecord({"loss": 0.0}),
        }
    )


def honest_upload(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    """An upload inside every limit: a few items of unit scale."""
    items = int(rng.integers(2, min(8, limits.max_items) + 1))
    vectors = rng.normal(size=(items, limits.dim)).astype(np.float32)
    weights = rng.uniform(1, 10, size=items).astype(np.float32)
    return _content(name, vectors, weights, n_images=int(rng.integers(1, 20)))


def _base(rng: np.random.Generator, limits: UploadLimits) -> tuple[np.ndarray, np.ndarray]:
    items = int(rng.integers(1, min(8, limits.max_items) + 1))
    return (
        rng.normal(size=(items, limits.dim)).astype(np.float32),
        rng.uniform(1, 10, size=items).astype(np.float32),
    )


def _magnitude(rng: np.random.Generator, above: float) -> float:
    """A float32-representable magnitude between 1.01 * `above` and 3e38, log-uniform."""
    low = np.log10(above * 1.01)
    return float(np.float32(10 ** rng.uniform(low, 38.4)))


def _dim(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    width = int(rng.choice([1, limits.dim - 1, limits.dim + 1, 2 * limits.dim, 0]))
    return _content(name, rng.normal(size=(v.shape[0], width)).astype(np.float32), w)


def _dtype(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    kind = rng.choice(["float64", "float16", "int32", "uint8", "complex64", "bool"])
    if rng.random() < 0.5:
        return _content(name, v.astype(kind), w)
    return _content(name, v, w.astype(kind))


def _nonfinite(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    value = rng.choice([np.nan, np.inf, -np.inf])
    v[rng.integers(v.shape[0]), rng.integers(v.shape[1])] = value
    return _content(name, v, w)


def _norm(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    rows = rng.random(v.shape[0]) < 0.5
    rows[rng.integers(v.shape[0])] = True
    # one coordinate alone carries the row past the bound
    v[rows, rng.integers(v.shape[1])] = _magnitude(rng, limits.max_norm) * rng.choice([-1, 1])
    if rng.random() < 0.3:
        w[rng.integers(w.shape[0])] = np.float32(3e38)
    return _content(name, v, w)


def _weight(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    bad = rng.choice(["zero", "negative", "nan", "inf", "huge"])
    value = {
        "zero": 0.0,
        "negative": -float(rng.uniform(0, 1e6)),
        "nan": np.nan,
        "inf": np.inf,
        "huge": _magnitude(rng, limits.max_weight),
    }[bad]
    w[rng.integers(w.shape[0])] = value
    return _content(name, v, w)


def _n_images(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    value = [0, -5, limits.max_images + 1, 2**62, 1.5, "3", True][int(rng.integers(7))]
    return _content(name, v, w, n_images=value)


def _items(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    if rng.random() < 0.5:
        return _content(name, np.zeros((0, limits.dim), np.float32), np.zeros(0, np.float32))
    items = limits.max_items + int(rng.integers(1, 4))
    v = rng.normal(size=(items, limits.dim)).astype(np.float32)
    return _content(name, v, np.ones(items, np.float32))


def _bytes(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    """More bytes than the cap, in the vectors, the weights or both."""
    v, w = _base(rng, limits)
    rows = limits.max_bytes // (4 * limits.dim) + int(rng.integers(1, 50))
    where = int(rng.integers(3))
    if where in (0, 2):
        v = np.zeros((rows, limits.dim), np.float32)
    if where in (1, 2):
        w = np.ones(rows * limits.dim, np.float32)
    return _content(name, v, w)


def _shape(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    choice = int(rng.integers(5))
    if choice == 0:
        return _content(name, v.reshape(-1), w)
    if choice == 1:
        return _content(name, v[None], w)
    if choice == 2:
        return _content(name, np.array(1.0, np.float32), w)
    if choice == 3:
        return _content(name, v, w[:, None])
    return _content(name, v, np.concatenate([w, w]))


def _header(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    v, w = _base(rng, limits)
    good = Array(v).data
    end = good.index(b"\n") + 1
    choice = int(rng.integers(5))
    if choice == 0:  # a header claiming a huge shape over a few bytes
        text = good[:end].replace(f"({v.shape[0]}, {v.shape[1]})".encode(), b"(99999999999, 152)")
        data = text + good[end:]
    elif choice == 1:  # truncated payload
        data = good[: end + int(rng.integers(0, 4 * v.size))]
    elif choice == 2:  # garbage
        data = rng.bytes(int(rng.integers(0, 2000)))
    elif choice == 3:  # a pickled object array (never unpickled)
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        data = buffer.getvalue()
    else:  # a bare pickle
        data = pickle.dumps({"vectors": v})
    forged = Array(dtype="float32", shape=tuple(v.shape), stype="numpy.ndarray", data=data)
    return _content(name, forged, w)


def _records(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    content = honest_upload(rng, limits, name)
    choice = int(rng.integers(6))
    if choice == 0:
        del content[wire.MEMORY]
    elif choice == 1:
        del content[wire.MEMORY_INFO]
    elif choice == 2:
        content[wire.MEMORY] = ConfigRecord({"vectors": "nope"})
    elif choice == 3:
        content[wire.MEMORY]["images"] = Array(np.zeros((2, 2), np.float32))  # type: ignore[index]
    elif choice == 4:
        del content[wire.MEMORY]["weights"]  # type: ignore[attr-defined]
    else:
        content[wire.MEMORY]["vectors"] = Array(  # type: ignore[index]
            dtype="float32", shape=(1,), stype="torch.tensor", data=b"\x00" * 4
        )
    return content


def _name(rng: np.random.Generator, limits: UploadLimits, name: str) -> RecordDict:
    content = honest_upload(rng, limits, name)
    choice = int(rng.integers(3))
    if choice == 0:
        content[wire.CLIENT] = ConfigRecord({"name": name + "-other"})
    elif choice == 1:
        content[wire.CLIENT] = ConfigRecord({"name": ""})
    else:
        del content[wire.CLIENT]
    return content


CATEGORIES: dict[str, Callable[[np.random.Generator, UploadLimits, str], RecordDict]] = {
    "dim": _dim,
    "dtype": _dtype,
    "nonfinite": _nonfinite,
    "norm": _norm,
    "weight": _weight,
    "n_images": _n_images,
    "items": _items,
    "bytes": _bytes,
    "shape": _shape,
    "header": _header,
    "records": _records,
    "name": _name,
}


def hostile_upload(
    rng: np.random.Generator, limits: UploadLimits, name: str
) -> tuple[RecordDict, str]:
    """One hostile ``train`` reply content for client `name`, and its category."""
    category = list(CATEGORIES)[int(rng.integers(len(CATEGORIES)))]
    return CATEGORIES[category](rng, limits, name), category


# ----------------------------------------------------------------------------------------------
# simulated rounds: a grid whose nodes answer with honest or hostile uploads


class FuzzGrid:
    """A Grid of scripted nodes: `honest` clients upload `honest_upload` (seeded by name and
    round, so the same with or without attackers), `hostile` ones a `hostile_upload` every
    round. Every message and reply goes through Flower's protobuf, as through a SuperLink."""

    def __init__(
        self, honest: list[str], hostile: list[str], limits: UploadLimits, *, seed: int
    ) -> None:
        self.names = {10 + i: name for i, name in enumerate([*honest, *hostile])}
        self.hostile = set(hostile)
        self.limits = limits
        self.seed = seed
        self.categories: dict[str, str] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.names)

    def _reply_content(self, message: Message, name: str) -> RecordDict:
        kind = message.metadata.message_type
        if kind == "query":
            return RecordDict({wire.CLIENT: ConfigRecord({"name": name})})
        if kind == "evaluate":
            return RecordDict(
                {
                    wire.CLIENT: ConfigRecord({"name": name}),
                    wire.METRICS: MetricRecord({"image_auroc": 0.5, "f1_max": 0.5}),
                }
            )
        round_idx = int(message.content[wire.INSTRUCTIONS]["round"])  # type: ignore[arg-type]
        if name in self.hostile:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode()), round_idx])
            content, self.categories[name] = hostile_upload(rng, self.limits, name)
            return content
        return honest_upload(
            np.random.default_rng([zlib.crc32(name.encode()), round_idx]), self.limits, name
        )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            wired = message_from_proto(message_to_proto(message))
            name = self.names[wired.metadata.dst_node_id]
            reply = Message(self._reply_content(wired, name), reply_to=wired)
            reply.metadata.__dict__["_src_node_id"] = wired.metadata.dst_node_id
            replies.append(message_from_proto(message_to_proto(reply)))
        return replies


def fuzz_spec(path: Path, names: list[str], *, rounds: int = 2, max_items: int = 50) -> Path:
    """A deployment-style spec (names only) for `names`, small uploads."""
    lines = [
        "[federation]",
        'name = "wire-fuzz"',
        f"rounds = {rounds}",
        "min_clients = 1",
        "seed = 0",
        "round_timeout_s = 30",
        "connect_timeout_s = 5",
        f"max_memory_items = {max_items}",
        "",
        "[model]",
        "image_size = 64",
        "client_memory_size = 5",
        "",
    ]
    for name in names:
        lines += ["[[clients]]", f'name = "{name}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
