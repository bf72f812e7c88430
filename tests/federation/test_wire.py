"""The wire format: round trips through Flower records and protobuf, validation, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import (
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from feddymem.config import ConfigError, FedDyMemConfig
from feddymem.federation import wire
from feddymem.federation.limits import UploadLimits, validate_memory
from feddymem.method.reduce import ReducedMemory

LIMITS = UploadLimits(
    dim=5,
    dtype="float32",
    max_items=20,
    max_norm=100.0,
    max_weight=1e6,
    max_images=1000,
    max_bytes=10_000,
)


def make_memory(items: int = 7, dim: int = 5, n: int = 3) -> ReducedMemory:
    gen = torch.Generator().manual_seed(0)
    return ReducedMemory(
        vectors=torch.randn(items, dim, generator=gen),
        weights=torch.rand(items, generator=gen) + 0.5,
        n_images=n,
    )


def _through_protobuf(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


def test_memory_round_trip_is_exact() -> None:
    memory = make_memory()
    arrays, info = wire.memory_to_records(memory)
    content = _through_protobuf(RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info}))
    back = wire.memory_from_content(content)
    assert torch.equal(back.vectors, memory.vectors)
    assert torch.equal(back.weights, memory.weights)
    assert back.n_images == 3
    assert back.vectors.dtype == torch.float32
    validate_memory(back, LIMITS)


def test_float16_memories_travel_at_half_the_bytes_and_decode_to_float32() -> None:
    memory = make_memory()
    sizes = {}
    for dtype in ("float32", "float16"):
        arrays, info = wire.memory_to_records(memory, dtype=dtype)
        content = RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info})
        sizes[dtype] = len(arrays["vectors"].data)
        back = wire.memory_from_content(_through_protobuf(content))
        assert back.vectors.dtype == torch.float32
        validate_memory(back, LIMITS)
        tolerance = 0.0 if dtype == "float32" else 1e-3 * float(memory.vectors.abs().max())
        assert float((back.vectors - memory.vectors).abs().max()) <= tolerance
        record = wire.global_memory_to_record(memory.vectors, dtype=dtype)
        content = _through_protobuf(RecordDict({wire.GLOBAL_MEMORY: record}))
        decoded = wire.global_memory_from_content(content)
        assert decoded is not None and torch.equal(decoded, back.vectors)
    payload = memory.vectors.numel()
    assert sizes["float32"] - sizes["float16"] == 2 * payload  # the .npy header is the same


def test_config_round_trip_keeps_every_field_including_none() -> None:
    config = FedDyMemConfig(
        image_size=96,
        layers=("blocks.4", "blocks.10"),
        global_memory_size=None,
        memory_reduce="position_average",
        radius=1e-5,
        seed=11,
    )
    record = _through_protobuf(RecordDict({wire.CONFIG: wire.config_to_record(config)}))[
        wire.CONFIG
    ]
    assert wire.config_from_record(record) == config  # type: ignore[arg-type]


def test_config_with_unknown_option_is_refused() -> None:
    record = ConfigRecord({"feddymem-config-json": '{"image_size": 64, "learning_rate": 1}'})
    with pytest.raises(ConfigError, match="learning_rate"):
        wire.config_from_record(record)


def test_instructions_global_memory_identity_and_metrics_round_trip() -> None:
    instructions = wire.Instructions(round_idx=3, num_rounds=5, run_name="fed", run_id="abc123")
    memory = torch.randn(4, 6)
    content = RecordDict(
        {
            wire.INSTRUCTIONS: wire.instructions_to_record(instructions),
            wire.GLOBAL_MEMORY: wire.global_memory_to_record(memory),
            wire.CLIENT: wire.identity_to_record(
                wire.ClientIdentity(name="site-a", model_file="/m.pt")
            ),
            wire.METRICS: wire.metrics_to_record(
                {"image_auroc": np.float32(0.75), "n": 3, "pixel_auroc": None}
            ),
        }
    )
    back = _through_protobuf(content)
    assert wire.instructions_from_content(back) == instructions
    gm = wire.global_memory_from_content(back)
    assert gm is not None and torch.equal(gm, memory)
    assert wire.identity_from_content(back) == wire.ClientIdentity(
        name="site-a", model_file="/m.pt"
    )
    metrics = wire.metrics_from_content(back)
    assert metrics == {"image_auroc": pytest.approx(0.75), "n": 3.0}
    assert wire.global_memory_from_content(RecordDict()) is None


def test_missing_and_extra_keys_are_wire_errors() -> None:
    with pytest.raises(wire.WireError, match="no 'instructions' record"):
        wire.instructions_from_content(RecordDict())
    extra = ArrayRecord(
        {
            "vectors": Array(np.zeros((2, 2), np.float32)),
            "generator.weight": Array(np.zeros(3, np.float32)),
        }
    )
    with pytest.raises(wire.WireError, match="unexpected arrays"):
        wire.global_memory_from_content(RecordDict({wire.GLOBAL_MEMORY: extra}))
    arrays, _ = wire.memory_to_records(make_memory())
    with pytest.raises(wire.MemoryRejected, match="memory-info"):
        wire.memory_from_content(RecordDict({wire.MEMORY: arrays}))


def test_the_byte_cap_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = make_memory(items=500, dim=5)
    arrays, info = wire.memory_to_records(memory)
    content = _through_protobuf(RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info}))
    decoded: list[int] = []
    original = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: decoded.append(1) or original(self))
    with pytest.raises(wire.MemoryRejected, match="exceeds the cap"):
        wire.memory_from_content(content, max_bytes=LIMITS.max_bytes)
    assert decoded == []


def test_a_header_claiming_a_huge_shape_is_refused_without_allocating() -> None:
    good = wire.to_array(np.ones((3, 5), dtype=np.float32))
    header_end = good.data.index(b"\n") + 1
    forged = good.data[:header_end].replace(b"(3, 5)", b"(99999999999, 5)")
    arrays = ArrayRecord(
        {
            "vectors": Array(
                dtype="float32",
                shape=(3, 5),
                stype="numpy.ndarray",
                data=forged + good.data[header_end:],
            ),
            "weights": wire.to_array(np.ones(3, dtype=np.float32)),
        }
    )
    content = RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: ConfigRecord({"n-images": 1})})
    with pytest.raises(wire.MemoryRejected, match="cannot be decoded"):
        wire.memory_from_content(content, max_bytes=LIMITS.max_bytes)


def test_bad_dtype_survives_the_wire_and_is_rejected() -> None:
    """A float64 upload must not be silently cast on arrival."""
    memory = ReducedMemory(
        vectors=torch.randn(3, 5, dtype=torch.float64), weights=torch.ones(3), n_images=1
    )
    arrays, info = wire.memory_to_records(memory)
    with pytest.raises(wire.MemoryRejected, match="float32"):
        wire.memory_from_content(
            _through_protobuf(RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info}))
        )


def test_message_size_counts_the_payload_as_serialised() -> None:
    small, large = make_memory(items=10, dim=16), make_memory(items=1000, dim=16)
    sizes = []
    for memory in (small, large):
        arrays, info = wire.memory_to_records(memory)
        message = Message(
            RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info}),
            dst_node_id=5,
            message_type="train",
        )
        size = wire.message_size(message)
        assert size == len(message_to_proto(message).SerializeToString())
        # what Flower 1.41 actually ships: the message's object tree, each object deflated
        deflated = sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
        assert abs(deflated - size) < 2000
        payload = memory.vectors.numel() * 4 + memory.weights.numel() * 4
        assert payload < size < payload + 1500
        assert (
            message_from_proto(message_to_proto(message)).content.keys() == message.content.keys()
        )
        sizes.append(size)
    assert sizes[1] > 50 * sizes[0] / 2


def test_to_array_keeps_the_shape_of_a_0d_array() -> None:
    """A 0-d buffer (the feature autoencoder's sample count) must travel as 0-d, not (1,)."""
    arr = wire.to_array(np.array(7.0, dtype=np.float32))
    assert arr.numpy().shape == ()
    assert float(arr.numpy()) == 7.0
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(wire.to_array(fortran).numpy(), fortran)


def test_the_vector_dtype_is_the_spec_s_wire_dtype() -> None:
    """float16 travels only when the spec says so; a float32 upload then is refused, and the
    other way round."""
    for sent, expected in (("float32", "float16"), ("float16", "float32")):
        arrays, info = wire.memory_to_records(make_memory(), dtype=sent)
        content = _through_protobuf(RecordDict({wire.MEMORY: arrays, wire.MEMORY_INFO: info}))
        with pytest.raises(wire.MemoryRejected, match="wire_dtype"):
            wire.memory_from_content(content, dtype=expected)
        assert wire.memory_from_content(content, dtype=sent).vectors.dtype == torch.float32
