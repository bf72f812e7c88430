"""The wire format: every record key and every array <-> record converter of the federation.

This is the one module that knows how FedDyMem's objects travel in Flower messages. What
crosses the wire, and nothing else:

server -> client (``train`` / ``evaluate``)
    ``instructions``   ConfigRecord: round index t, number of rounds R, run name
    ``config``         ConfigRecord: the FedDyMemConfig as JSON, so a deployed site needs no spec
    ``global-memory``  ArrayRecord: M_g, (C, d) float32 (absent in round 0)
client -> server (``train`` reply)
    ``client``         ConfigRecord: the client's name
    ``memory``         ArrayRecord: M_k (C_k, d) float32 and its per-item weights (C_k,) float32
    ``memory-info``    ConfigRecord: n_k, the number of images the memory summarises
    ``metrics``        MetricRecord: scalar training metrics
client -> server (``evaluate`` reply)
    ``client``, ``metrics`` (image AUROC, F1-max, pixel AUROC / AUPRO where masks exist)
client -> server (``query`` reply, "who are you")
    ``client``

No image, no feature map and no generator weight has a key here, so none can travel.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_to_proto, recorddict_to_proto

from feddymem.config import FedDyMemConfig, from_dict, to_dict
from feddymem.federation import compress
from feddymem.federation.compress import SQ_BITS
from feddymem.method.reduce import ReducedMemory

if TYPE_CHECKING:
    pass

__all__ = [
    "ARRAY_KEYS",
    "CLIENT",
    "CONFIG",
    "GLOBAL_MEMORY",
    "INSTRUCTIONS",
    "MEMORY",
    "MEMORY_INFO",
    "METRICS",
    "ClientIdentity",
    "Instructions",
    "MemoryRejected",
    "WireError",
    "WireFormat",
    "config_from_content",
    "config_from_record",
    "config_to_record",
    "global_memory_from_content",
    "global_memory_to_record",
    "identity_from_content",
    "identity_to_record",
    "instructions_from_content",
    "instructions_to_record",
    "memory_from_content",
    "memory_to_records",
    "message_size",
    "metrics_from_content",
    "metrics_to_record",
    "recorddict_size",
    "to_array",
]

# --- record keys (RecordDict level) ---
INSTRUCTIONS = "instructions"
CONFIG = "config"
GLOBAL_MEMORY = "global-memory"
CLIENT = "client"
MEMORY = "memory"
MEMORY_INFO = "memory-info"
METRICS = "metrics"

# --- keys inside records ---
_ROUND = "round"
_NUM_ROUNDS = "num-rounds"
_RUN_NAME = "run-name"
_RUN_ID = "run-id"
_MODEL_FILE = "model-file"
_CONFIG_JSON = "feddymem-config-json"
_VECTORS = "vectors"
_WEIGHTS = "weights"
_N_IMAGES = "n-images"
_PQ_CODES = "pq-codes"
_PQ_CODEBOOK = "pq-codebook"
_SQ_CODES = "sq-codes"
_SQ_RANGES = "sq-ranges"
_NAME = "name"

# Every array that may ever travel, by record: the check that nothing else does is a test.
# Vectors travel in one of three forms, never two: `vectors` (float32 / float16), product-
# quantised codes and their codebook ("pq"), or scalar-quantised codes and ranges ("sq8", "sq4").
_FORMS: Mapping[str, frozenset[str]] = {
    "plain": frozenset({_VECTORS}),
    "pq": frozenset({_PQ_CODES, _PQ_CODEBOOK}),
    "sq": frozenset({_SQ_CODES, _SQ_RANGES}),
}
_VECTOR_KEYS = frozenset().union(*_FORMS.values())
ARRAY_KEYS: Mapping[str, frozenset[str]] = {
    GLOBAL_MEMORY: _VECTOR_KEYS,
    MEMORY: _VECTOR_KEYS | {_WEIGHTS},
}


_WIRE_DTYPES: Mapping[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}
"""The dtypes memory vectors may travel in as plain arrays (`FedDyMemConfig.wire_dtype`)."""


@dataclass(frozen=True)
class WireFormat:
    """How memory vectors travel: ``float32``, ``float16``, ``pq`` (product-quantised with
    `pq_subdim` values per sub-vector and 2**`pq_bits` centres per sub-space) or ``sq8`` /
    ``sq4`` (scalar-quantised, 8 or 4 bits a value); compress.py."""

    dtype: str = "float32"
    pq_subdim: int = 4
    pq_bits: int = 6

    @classmethod
    def of(cls, config: FedDyMemConfig) -> WireFormat:
        return cls(config.wire_dtype, config.wire_pq_subdim, config.wire_pq_bits)

    @property
    def form(self) -> str:
        """``plain``, ``pq`` or ``sq``: which arrays carry the vectors."""
        return self.dtype if self.dtype == "pq" else "sq" if self.dtype in SQ_BITS else "plain"


def _format(fmt: WireFormat | str) -> WireFormat:
    return fmt if isinstance(fmt, WireFormat) else WireFormat(dtype=fmt)


class WireError(ValueError):
    """A message lacks a record or a key this module expects, or holds a wrong type."""


class MemoryRejected(ValueError):
    """An uploaded memory fails validation; the message says why (for the server's log)."""


@dataclass(frozen=True)
class Instructions:
    """What the server asks for in one message: round t of R rounds of run `run_name`.

    `run_id` is drawn once per fresh run (kept on resume): clients keep their state per run,
    so a stale state of an earlier run is never taken for this one.
    """

    round_idx: int
    num_rounds: int
    run_name: str
    run_id: str


@dataclass(frozen=True)
class ClientIdentity:
    """The name a client reports (from its node config or the federation spec), and where it
    wrote its model file (evaluate replies only; a path on the client's machine)."""

    name: str
    model_file: str | None = None


# ----------------------------------------------------------------------------------------------
# helpers


def _record(content: RecordDict, key: str, kind: type) -> Any:
    if key not in content:
        raise WireError(f"message has no '{key}' record")
    record = content[key]
    if not isinstance(record, kind):
        raise WireError(f"record '{key}' is a {type(record).__name__}, expected {kind.__name__}")
    return record


def _value(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record:
        raise WireError(f"record '{where}' has no key '{key}'")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"'{where}.{key}' has type {type(value).__name__}")
    return value


def to_array(array: np.ndarray) -> Array:
    """A C-contiguous Flower `Array` of `array`, shape kept (0-d too: `np.ascontiguousarray`
    would turn a 0-d array into shape (1,))."""
    # Flower wants `Array` values (bare ndarrays are rejected).
    return Array(np.require(array, requirements="C"))


# ----------------------------------------------------------------------------------------------
# instructions and config (server -> client)


def instructions_to_record(instructions: Instructions) -> ConfigRecord:
    """Round index, number of rounds and run name as a ConfigRecord."""
    return ConfigRecord(
        {
            _ROUND: int(instructions.round_idx),
            _NUM_ROUNDS: int(instructions.num_rounds),
            _RUN_NAME: str(instructions.run_name),
            _RUN_ID: str(instructions.run_id),
        }
    )


def instructions_from_content(content: RecordDict) -> Instructions:
    """Read the ``instructions`` record of a message."""
    record = _record(content, INSTRUCTIONS, ConfigRecord)
    return Instructions(
        round_idx=_value(record, _ROUND, int, INSTRUCTIONS),
        num_rounds=_value(record, _NUM_ROUNDS, int, INSTRUCTIONS),
        run_name=_value(record, _RUN_NAME, str, INSTRUCTIONS),
        run_id=_value(record, _RUN_ID, str, INSTRUCTIONS),
    )


def config_to_record(config: FedDyMemConfig) -> ConfigRecord:
    """The FedDyMemConfig as one JSON string (keeps None and nested values exactly)."""
    return ConfigRecord({_CONFIG_JSON: json.dumps(to_dict(config), sort_keys=True)})


def config_from_record(record: ConfigRecord) -> FedDyMemConfig:
    """Rebuild the FedDyMemConfig; unknown or invalid options raise ConfigError."""
    text = _value(record, _CONFIG_JSON, str, CONFIG)
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise WireError(f"'{CONFIG}.{_CONFIG_JSON}' is not JSON: {err}") from None
    if not isinstance(values, dict):
        raise WireError(f"'{CONFIG}.{_CONFIG_JSON}' is not a JSON object")
    return from_dict(FedDyMemConfig, values, where="config received from the server")


def config_from_content(content: RecordDict) -> FedDyMemConfig:
    """Read the ``config`` record of a message."""
    return config_from_record(_record(content, CONFIG, ConfigRecord))


def _vectors_to_arrays(vectors: np.ndarray, fmt: WireFormat, seed: int) -> dict[str, Array]:
    """(N, d) float32 vectors as the arrays of `fmt`."""
    if fmt.dtype == "pq":
        codes, codebook = compress.encode(
            vectors, subdim=fmt.pq_subdim, bits=fmt.pq_bits, seed=seed
        )
        return {_PQ_CODES: to_array(codes), _PQ_CODEBOOK: to_array(codebook)}
    if fmt.dtype in SQ_BITS:
        codes, ranges = compress.sq_encode(vectors, bits=SQ_BITS[fmt.dtype])
        return {_SQ_CODES: to_array(codes), _SQ_RANGES: to_array(ranges)}
    if fmt.dtype != "float32":  # float32 goes as it is (a wrong dtype is the receiver's to refuse)
        vectors = vectors.astype(_WIRE_DTYPES[fmt.dtype])
    return {_VECTORS: to_array(vectors)}


def _vectors_from_record(
    record: ArrayRecord, where: str, fmt: WireFormat | None, dim: int | None
) -> np.ndarray:
    """The vectors of `record` as sent: float32 / float16 as they are, pq and sq decoded to
    float32. With `fmt` given, the record must be in that format (coded forms need `fmt` and
    `dim` to decode)."""
    forms = [name for name, keys in _FORMS.items() if keys & set(record.keys())]
    if len(forms) > 1:
        raise WireError(f"record '{where}' holds vectors in more than one form: {forms}")
    form = forms[0] if forms else "plain"
    if fmt is not None and form != fmt.form:
        raise WireError(
            f"'{where}' vectors must be {fmt.dtype} (the spec's wire_dtype), got {form} vectors"
        )
    if form == "plain":
        vectors = _decode(record, _VECTORS, where)
        if fmt is not None and vectors.dtype != np.dtype(fmt.dtype):
            raise WireError(
                f"'{where}' vectors must be {fmt.dtype} (the spec's wire_dtype), got "
                f"{vectors.dtype}"
            )
        if vectors.ndim != 2 or vectors.dtype not in (np.float32, np.float16):
            raise WireError(
                f"'{where}' vectors must be 2-D float32 or float16, got {vectors.dtype} "
                f"{vectors.shape}"
            )
        return vectors.astype(np.float32, copy=False)
    if fmt is None or dim is None:
        raise WireError(f"'{where}' holds {form} codes but the receiver expects plain vectors")
    try:
        if form == "pq":
            return compress.decode(
                _decode(record, _PQ_CODES, where),
                _decode(record, _PQ_CODEBOOK, where),
                dim=dim,
                subdim=fmt.pq_subdim,
                max_bits=fmt.pq_bits,
            )
        return compress.sq_decode(
            _decode(record, _SQ_CODES, where),
            _decode(record, _SQ_RANGES, where),
            dim=dim,
            bits=SQ_BITS[fmt.dtype],
        )
    except compress.CodeError as err:
        raise WireError(f"'{where}' {form} codes: {err}") from None


def global_memory_to_record(
    global_memory: torch.Tensor, *, dtype: WireFormat | str = "float32", seed: int = 0
) -> ArrayRecord:
    """M_g, (C, d), as an ArrayRecord in `dtype` (``float32``, ``float16`` or a WireFormat,
    ``pq`` coded with `seed`)."""
    vectors = global_memory.detach().to("cpu", torch.float32).contiguous().numpy()
    return ArrayRecord(_vectors_to_arrays(vectors, _format(dtype), seed))


def global_memory_from_content(
    content: RecordDict, *, fmt: WireFormat | None = None, dim: int | None = None
) -> torch.Tensor | None:
    """M_g from a message (float32), or None when the message carries none (round 0). With
    `fmt`, it must travel in that format; pq codes need `fmt` and `dim` to decode."""
    if GLOBAL_MEMORY not in content:
        return None
    record = _record(content, GLOBAL_MEMORY, ArrayRecord)
    _only_keys(record, GLOBAL_MEMORY)
    return torch.from_numpy(_vectors_from_record(record, GLOBAL_MEMORY, fmt, dim))


# ----------------------------------------------------------------------------------------------
# client identity, memory and metrics (client -> server)


def identity_to_record(identity: ClientIdentity) -> ConfigRecord:
    """The client's name as a ConfigRecord."""
    values: dict[str, ConfigRecordValues] = {_NAME: identity.name}
    if identity.model_file is not None:
        values[_MODEL_FILE] = identity.model_file
    return ConfigRecord(values)


def identity_from_content(content: RecordDict) -> ClientIdentity:
    """Read the ``client`` record of a reply."""
    record = _record(content, CLIENT, ConfigRecord)
    name = _value(record, _NAME, str, CLIENT)
    if not name:
        raise WireError(f"'{CLIENT}.{_NAME}' is empty")
    model_file = record.get(_MODEL_FILE)
    return ClientIdentity(name=name, model_file=model_file if isinstance(model_file, str) else None)


def memory_to_records(
    memory: ReducedMemory, *, dtype: WireFormat | str = "float32", seed: int = 0
) -> tuple[ArrayRecord, ConfigRecord]:
    """M_k (vectors in `dtype`: ``float32``, ``float16`` or a WireFormat, ``pq`` coded with
    `seed`) with its float32 weights, and n_k, as the ``memory`` and ``memory-info`` records."""
    vectors = memory.vectors.detach().to("cpu").contiguous().numpy()
    weights = memory.weights.detach().to("cpu").contiguous().numpy()
    arrays = ArrayRecord(
        {**_vectors_to_arrays(vectors, _format(dtype), seed), _WEIGHTS: to_array(weights)}
    )
    info = ConfigRecord({_N_IMAGES: int(memory.n_images)})
    return arrays, info


def memory_from_content(
    content: RecordDict,
    *,
    max_bytes: int | None = None,
    dtype: WireFormat | str | None = None,
    dim: int | None = None,
) -> ReducedMemory:
    """Decode an uploaded memory exactly as sent (no dtype or shape coercion).

    `dtype` (the spec's wire format) is the one the vectors must have: float32, float16, or pq
    codes, decoded to float32 with the receiver's own settings and `dim`.
    `max_bytes` caps the raw bytes of the memory's arrays, checked before numpy parses them
    (the header and shape a sender claims are not trusted). Anything malformed or too large
    raises MemoryRejected: the server drops the client with the reason. Call
    `limits.validate_memory` afterwards for the numeric checks.
    """
    try:
        record = _record(content, MEMORY, ArrayRecord)
        _only_keys(record, MEMORY)
        if max_bytes is not None:
            size = sum(len(record[key].data) for key in record.keys())
            if size > max_bytes:
                raise MemoryRejected(f"upload of {size} bytes exceeds the cap of {max_bytes} bytes")
        fmt = None if dtype is None else _format(dtype)
        vectors = _vectors_from_record(record, MEMORY, fmt, dim)
        weights = _decode(record, _WEIGHTS, MEMORY)
        info = _record(content, MEMORY_INFO, ConfigRecord)
        n_images = _value(info, _N_IMAGES, int, MEMORY_INFO)
    except WireError as err:
        raise MemoryRejected(f"malformed memory upload: {err}") from None
    if weights.dtype != np.float32:
        raise MemoryRejected(f"memory weights must be float32, got {weights.dtype}")
    return ReducedMemory(
        vectors=torch.from_numpy(vectors),
        weights=torch.from_numpy(weights),
        n_images=n_images,
    )


def metrics_to_record(metrics: Mapping[str, float | int | np.number[Any] | None]) -> MetricRecord:
    """Scalar metrics as a MetricRecord; None values (pixel AUROC without masks) are left out."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise WireError(f"metric '{key}' is not a number: {value!r}")
        out[key] = int(value) if isinstance(value, (int, np.integer)) else float(value)
    return MetricRecord(out)  # type: ignore[arg-type]


def metrics_from_content(content: RecordDict) -> dict[str, float]:
    """The ``metrics`` record of a reply as a plain dict (empty when absent)."""
    if METRICS not in content:
        return {}
    record = _record(content, METRICS, MetricRecord)
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _only_keys(record: ArrayRecord, where: str) -> None:
    extra = sorted(set(record.keys()) - ARRAY_KEYS[where])
    if extra:
        raise WireError(f"record '{where}' holds unexpected arrays {extra}")


def _decode(record: ArrayRecord, key: str, where: str) -> np.ndarray:
    """The array `where.key`, parsed only once its .npy header agrees with its byte count (a
    header claiming a huge shape over a few bytes would otherwise allocate it)."""
    if key not in record:
        raise WireError(f"record '{where}' has no array '{key}'")
    item = record[key]
    try:
        buffer = io.BytesIO(item.data)
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
        else:
            raise ValueError(f".npy version {version} is not accepted")
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        payload = len(item.data) - buffer.tell()
        if math.prod(shape) * dtype.itemsize != payload:
            raise ValueError(f"header says {shape} {dtype}, payload is {payload} bytes")
        array = item.numpy()
    except (TypeError, ValueError, EOFError, OSError, SyntaxError, MemoryError) as err:
        raise WireError(f"array '{where}.{key}' cannot be decoded: {err}") from None
    return array


# ----------------------------------------------------------------------------------------------
# sizes on the wire


def recorddict_size(content: RecordDict) -> int:
    """Bytes of a RecordDict serialised to Flower's protobuf (``RecordDict.ByteSize()``)."""
    return int(recorddict_to_proto(content).ByteSize())


def message_size(message: Message) -> int:
    """Bytes of a whole Message (metadata + content or error) serialised to Flower's protobuf.

    Flower 1.41 transports a message as a tree of deflated objects (message, record dict,
    records, arrays, 5 MB chunks); the protobuf size is the same payload up to a few header
    bytes per object, and it is what we report as bytes up / down.
    """
    return int(message_to_proto(message).ByteSize())
