"""Product-quantised memories on the wire (federation/compress.py, wire_dtype = "pq"): round
trips, their bytes, and the receiver refusing codes that do not fit its settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from feddymem.config import ConfigError, FedDyMemConfig
from feddymem.federation import compress, wire
from feddymem.federation.limits import BYTES_SLACK, UploadLimits, upload_limits, validate_memory
from feddymem.federation.server_app import read_upload
from feddymem.method.reduce import ReducedMemory

PQ = wire.WireFormat("pq", pq_subdim=4, pq_bits=6)


def _prototypes(items: int, dim: int, kinds: int, seed: int = 0) -> np.ndarray:
    """`items` vectors, each a copy of one of `kinds` random prototypes."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((kinds, dim)).astype(np.float32)
    return protos[rng.integers(0, kinds, size=items)]


def test_a_memory_of_few_kinds_decodes_to_itself_up_to_float16() -> None:
    # every sub-vector takes at most 16 values: 64 centres per sub-space hold them all
    x = _prototypes(500, 12, kinds=16)
    codes, codebook = compress.encode(x, subdim=4, bits=6, seed=0)
    back = compress.decode(codes, codebook, dim=12, subdim=4, max_bits=6)
    assert back.shape == x.shape and back.dtype == np.float32
    assert float(np.abs(back - x).max()) <= 2e-3 * float(np.abs(x).max())


def test_real_looking_memories_decode_closer_than_their_mean_and_bytes_are_as_stated() -> None:
    rng = np.random.default_rng(1)
    # correlated vectors (a low-rank part and noise), like patch features
    x = (rng.standard_normal((2048, 8)) @ rng.standard_normal((8, 152))).astype(np.float32)
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    codes, codebook = compress.encode(x, subdim=4, bits=6, seed=0)
    back = compress.decode(codes, codebook, dim=152, subdim=4, max_bits=6)
    error = np.linalg.norm(back - x) / np.linalg.norm(x - x.mean(0))
    assert error < 0.5
    assert codes.nbytes + codebook.nbytes == compress.encoded_bytes(2048, 152, subdim=4, bits=6)
    assert codes.nbytes + codebook.nbytes < x.nbytes / 8  # the float32 memory's bytes


def test_encoding_is_seeded_and_handles_odd_widths_and_tiny_memories() -> None:
    x = _prototypes(300, 10, kinds=40, seed=3)  # 10 = 2 sub-vectors of 4 and one padded
    a = compress.encode(x, subdim=4, bits=6, seed=5)
    b = compress.encode(x, subdim=4, bits=6, seed=5)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert compress.decode(*a, dim=10, subdim=4, max_bits=6).shape == (300, 10)
    for items in (1, 2, 3, 40):  # fewer vectors than 2**bits centres: fewer bits
        codes, codebook = compress.encode(x[:items], subdim=4, bits=6, seed=0)
        back = compress.decode(codes, codebook, dim=10, subdim=4, max_bits=6)
        assert back.shape == (items, 10)
        if items <= 2:
            assert np.allclose(back, x[:items], atol=2e-3 * float(np.abs(x).max()))


def test_decode_refuses_codes_and_codebooks_that_do_not_fit_the_settings() -> None:
    x = _prototypes(200, 12, kinds=30)
    codes, codebook = compress.encode(x, subdim=4, bits=6, seed=0)
    bad = {
        "wider sub-vectors": (codes, codebook.reshape(3, 32, 8)),
        "more bits than allowed": (codes, np.zeros((3, 512, 4), np.float16)),
        "not a power of two": (codes, np.zeros((3, 48, 4), np.float16)),
        "float32 codebook": (codes, codebook.astype(np.float32)),
        "codes too wide": (np.zeros((200, codes.shape[1] + 1), np.uint8), codebook),
        "codes not uint8": (codes.astype(np.int16), codebook),
        "no codes": (codes[:0], codebook),
    }
    for what, (c, book) in bad.items():
        with pytest.raises(compress.CodeError):
            compress.decode(c, book, dim=12, subdim=4, max_bits=6)
        assert what


def _memory(items: int = 300, dim: int = 12) -> ReducedMemory:
    return ReducedMemory(
        vectors=torch.from_numpy(_prototypes(items, dim, kinds=20)),
        weights=torch.rand(items, generator=torch.Generator().manual_seed(0)) + 0.5,
        n_images=4,
    )


def _content(memory: ReducedMemory, fmt: wire.WireFormat | str) -> RecordDict:
    arrays, info = wire.memory_to_records(memory, dtype=fmt, seed=0)
    content = RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info})
    return recorddict_from_proto(recorddict_to_proto(content))


def test_pq_memories_travel_through_flower_records_and_the_receiver_checks_the_format() -> None:
    memory = _memory()
    back = wire.memory_from_content(_content(memory, PQ), dtype=PQ, dim=12)
    assert back.vectors.shape == memory.vectors.shape and back.vectors.dtype == torch.float32
    assert torch.allclose(back.vectors, memory.vectors, atol=1e-2)
    assert torch.equal(back.weights, memory.weights) and back.n_images == 4
    with pytest.raises(wire.MemoryRejected, match="wire_dtype"):
        wire.memory_from_content(_content(memory, PQ), dtype="float32", dim=12)
    with pytest.raises(wire.MemoryRejected, match="wire_dtype"):
        wire.memory_from_content(_content(memory, "float32"), dtype=PQ, dim=12)
    other = wire.WireFormat("pq", pq_subdim=2, pq_bits=6)
    with pytest.raises(wire.MemoryRejected, match="pq codes"):
        wire.memory_from_content(_content(memory, PQ), dtype=other, dim=12)
    record = wire.global_memory_to_record(memory.vectors, dtype=PQ, seed=1)
    content = recorddict_from_proto(recorddict_to_proto(RecordDict({wire.GLOBAL_MEMORY: record})))
    decoded = wire.global_memory_from_content(content, fmt=PQ, dim=12)
    assert decoded is not None and torch.allclose(decoded, memory.vectors, atol=1e-2)
    with pytest.raises(wire.WireError):
        wire.global_memory_from_content(content)  # coded, but the receiver expects no pq


def test_a_hostile_codebook_is_decoded_then_refused_by_the_limits() -> None:
    limits = UploadLimits(
        dim=12,
        dtype="pq",
        max_items=400,
        max_norm=100.0,
        max_weight=1e6,
        max_images=100,
        max_bytes=1_000_000,
    )
    memory = _memory()
    arrays, info = wire.memory_to_records(memory, dtype=PQ, seed=0)
    book = arrays["pq-codebook"].numpy().copy()
    for poison in (np.float16(6e4), np.float16(np.nan)):
        book[0, :, 0] = poison  # every code of sub-space 0 decodes to it
        hostile = ArrayRecord({**dict(arrays.items()), "pq-codebook": wire.to_array(book)})
        content = RecordDict(
            {
                wire.CLIENT: wire.identity_to_record(wire.ClientIdentity("site-a")),
                wire.MEMORY: hostile,
                wire.MEMORY_INFO: info,
            }
        )
        with pytest.raises(wire.MemoryRejected):
            read_upload(content, name="site-a", limits=limits)
    validate_memory(wire.memory_from_content(_content(memory, PQ), dtype=PQ, dim=12), limits)


def test_the_spec_bounds_pq_uploads_by_their_own_bytes() -> None:
    plain = upload_limits(FedDyMemConfig(), max_items=2048)
    coded = upload_limits(FedDyMemConfig(wire_dtype="pq"), max_items=2048)
    assert coded.wire == wire.WireFormat("pq", 4, 6)
    assert coded.max_bytes < plain.max_bytes / 5
    for bad in ({"wire_pq_bits": 9}, {"wire_pq_subdim": 0}, {"wire_dtype": "int8"}):
        with pytest.raises(ConfigError):
            FedDyMemConfig(**bad)  # type: ignore[arg-type]


def test_scalar_quantised_memories_keep_every_item_at_a_fraction_of_the_bytes() -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1024, 8)) @ rng.standard_normal((8, 152))).astype(np.float32)
    spread = np.linalg.norm(x - x.mean(0))
    for bits, bound in ((8, 0.01), (4, 0.2)):
        codes, ranges = compress.sq_encode(x, bits=bits)
        back = compress.sq_decode(codes, ranges, dim=152, bits=bits)
        assert back.shape == x.shape and back.dtype == np.float32
        assert np.linalg.norm(back - x) / spread < bound
        assert codes.nbytes + ranges.nbytes == compress.sq_bytes(1024, 152, bits=bits)
    assert compress.sq_bytes(1024, 152, bits=4) < 95 * 1024  # FedAvg's bytes a round
    one = compress.sq_decode(*compress.sq_encode(x[:1], bits=4), dim=152, bits=4)
    assert np.allclose(one, x[:1], atol=1e-5)  # a single vector: zero spans, exact


def test_scalar_decode_refuses_what_does_not_fit_and_the_wire_checks_the_form() -> None:
    x = _prototypes(100, 12, kinds=10)
    codes, ranges = compress.sq_encode(x, bits=4)
    for c, r in (
        (codes, ranges.astype(np.float16)),
        (codes, ranges[:, :6]),
        (codes[:, :3], ranges),
        (codes[:0], ranges),
    ):
        with pytest.raises(compress.CodeError):
            compress.sq_decode(c, r, dim=12, bits=4)
    memory = _memory()
    sq4 = wire.WireFormat("sq4")
    back = wire.memory_from_content(_content(memory, sq4), dtype=sq4, dim=12)
    assert float((back.vectors - memory.vectors).abs().max()) < 0.2 * float(memory.vectors.std())
    for sent, expected in ((sq4, PQ), (PQ, sq4), (sq4, "float16"), ("float32", sq4)):
        with pytest.raises(wire.MemoryRejected, match="wire_dtype"):
            wire.memory_from_content(_content(memory, sent), dtype=expected, dim=12)
    coded = upload_limits(FedDyMemConfig(wire_dtype="sq4"), max_items=1024).max_bytes
    plain = upload_limits(FedDyMemConfig(), max_items=1024).max_bytes
    assert coded - BYTES_SLACK < (plain - BYTES_SLACK) / 7
