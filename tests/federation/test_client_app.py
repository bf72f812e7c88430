"""ClientApp handlers called directly (with the fake client): unpack, one core call, pack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fakes import DIM, ITEMS, FakeClient, Faults
from flwr.app import ArrayRecord, Context, Message, RecordDict, UserConfigValue

from feddymem.config import FedDyMemConfig
from feddymem.federation import wire
from feddymem.federation.client_app import build_client_app
from feddymem.federation.client_base import CLIENT_ERROR_CODE, MODEL_FILE
from feddymem.federation.limits import upload_limits, validate_memory

CONFIG = FedDyMemConfig(image_size=64, client_memory_size=ITEMS, seed=3)


def _context(
    node_config: dict[str, UserConfigValue], run_config: dict[str, UserConfigValue] | None = None
) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config or {},
    )


def _message(
    kind: str, round_idx: int, memory: torch.Tensor | None = None, config: FedDyMemConfig = CONFIG
) -> Message:
    content = RecordDict(
        {
            wire.INSTRUCTIONS: wire.instructions_to_record(
                wire.Instructions(round_idx=round_idx, num_rounds=2, run_name="fed", run_id="r1")
            ),
            wire.CONFIG: wire.config_to_record(config),
        }
    )
    if memory is not None:
        fmt = wire.WireFormat.of(config)
        content[wire.GLOBAL_MEMORY] = wire.global_memory_to_record(memory, dtype=fmt)
    return Message(content, dst_node_id=7, message_type=kind)


@pytest.fixture
def site(tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]) -> Context:
    """A deployed site: name and data from its node config."""
    return _context(
        {
            "name": "site-a",
            "data": f"{trees['alpha']},{trees['beta']}",
            "work-dir": str(tmp_path / "work"),
        }
    )


def test_query_replies_the_name(site: Context) -> None:
    app = build_client_app()
    reply = app(Message(RecordDict(), dst_node_id=7, message_type="query"), site)
    assert wire.identity_from_content(reply.content).name == "site-a"


def test_a_pq_federation_site_decodes_m_g_and_replies_pq_codes(site: Context) -> None:
    config = FedDyMemConfig(image_size=64, client_memory_size=ITEMS, seed=3, wire_dtype="pq")
    limits = upload_limits(config, max_items=100)
    app = build_client_app()
    app(_message("train", 0, config=config), site)
    global_memory = torch.randn(ITEMS, DIM, generator=torch.Generator().manual_seed(0))
    reply = app(_message("train", 1, memory=global_memory, config=config), site)
    assert not reply.has_error()
    assert set(reply.content[wire.MEMORY].keys()) == {"pq-codes", "pq-codebook", "weights"}
    memory = wire.memory_from_content(reply.content, dtype=limits.wire, dim=limits.dim)
    validate_memory(memory, limits)
    with pytest.raises(wire.MemoryRejected, match="wire_dtype"):
        wire.memory_from_content(reply.content, dtype="float32")


def test_train_round_zero_then_one(site: Context, tmp_path: Path) -> None:
    app = build_client_app()
    reply = app(_message("train", 0), site)
    assert not reply.has_error()
    assert set(reply.content.keys()) == {wire.CLIENT, wire.MEMORY, wire.MEMORY_INFO, wire.METRICS}
    memory = wire.memory_from_content(reply.content)
    validate_memory(memory, upload_limits(FedDyMemConfig(image_size=64), max_items=100))
    assert memory.n_images == 4 + 5  # the union of both roots' training normals
    assert (tmp_path / "work" / "site-a" / "fed-r1" / "state.json").is_file()
    metrics = wire.metrics_from_content(reply.content)
    assert "client_s" in metrics and "loss" in metrics

    model_file = tmp_path / "work" / "site-a" / "fed-r1" / MODEL_FILE
    assert not model_file.exists()  # round 0 has no global memory yet: no model
    reply = app(_message("train", 1, memory=torch.ones(ITEMS, DIM)), site)
    assert not reply.has_error()
    assert Faults.calls == [("site-a", "train", 0), ("site-a", "train", 1)]
    # after a round with M_g, the site's model file is there for a scoring service to swap in
    written = torch.load(model_file, weights_only=True)
    assert written["provenance"]["round"] == 1 and written["provenance"]["stage"] == "round"
    assert written["provenance"]["source"] == "federation"


def test_evaluate_replies_metrics_only_and_exports(site: Context, tmp_path: Path) -> None:
    app = build_client_app()
    app(_message("train", 0), site)
    reply = app(_message("evaluate", 0, memory=torch.zeros(ITEMS, DIM)), site)
    assert not reply.has_error()
    assert set(reply.content.keys()) == {wire.CLIENT, wire.METRICS}
    assert not any(isinstance(r, ArrayRecord) for r in reply.content.values())
    metrics = wire.metrics_from_content(reply.content)
    assert {"image_auroc", "f1_max", "pixel_auroc", "aupro", "n_test"} <= set(metrics)
    # and what the site's own threshold flags on its test set
    assert {"threshold", "recall_at_threshold", "false_alarm_rate_at_threshold"} <= set(metrics)
    identity = wire.identity_from_content(reply.content)
    assert identity.model_file == str(tmp_path / "work" / "site-a" / "fed-r1" / MODEL_FILE)
    assert Path(identity.model_file).is_file()
    assert torch.load(identity.model_file, weights_only=True)["provenance"]["stage"] == "final"


def test_evaluate_without_global_memory_is_an_error(site: Context) -> None:
    reply = build_client_app()(_message("evaluate", 0), site)
    assert reply.has_error() and "global memory" in str(reply.error.reason)


def test_a_raising_client_replies_an_error(site: Context) -> None:
    Faults.plan = {"site-a": (0, "raise")}
    reply = build_client_app()(_message("train", 0), site)
    assert reply.has_error()
    assert reply.error.code == CLIENT_ERROR_CODE
    assert "RuntimeError: injected failure in round 0" in str(reply.error.reason)


def test_a_client_ahead_of_the_server_refuses(site: Context) -> None:
    app = build_client_app()
    for t in range(3):
        app(_message("train", t, memory=None if t == 0 else torch.zeros(ITEMS, DIM)), site)
    reply = app(_message("train", 1, memory=torch.zeros(ITEMS, DIM)), site)
    assert reply.has_error() and "has done round 2" in str(reply.error.reason)
    # the round it just did is replayed, not redone
    replay = app(_message("train", 2, memory=torch.zeros(ITEMS, DIM)), site)
    assert wire.metrics_from_content(replay.content)["replayed"] == 1.0


def test_simulated_client_takes_its_data_from_the_spec(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    from fakes import write_spec

    spec = write_spec(
        tmp_path / "s.toml", clients={"x": [str(trees["alpha"])], "y": [str(trees["gamma"])]}
    )
    app = build_client_app(defaults={"spec": str(spec), "work-dir": str(tmp_path / "w")})
    ctx = _context({"partition-id": 1, "num-partitions": 2})
    reply = app(Message(RecordDict(), dst_node_id=7, message_type="query"), ctx)
    assert wire.identity_from_content(reply.content).name == "y"
    reply = app(_message("train", 0), ctx)
    assert wire.memory_from_content(reply.content).n_images == 6  # gamma has 4 + 2 normals


@pytest.mark.parametrize(
    ("node_config", "match"),
    [
        ({"name": "a", "data": "/x"}, "'work-dir' is not set"),
        ({"data": "/x", "work-dir": "/tmp/w"}, "'name' must be set"),
        ({"work-dir": "/tmp/w"}, "neither 'data'"),
        (
            {"name": "a", "data": "/does/not/exist", "work-dir": "/tmp/w"},
            "not exist|not found|missing",
        ),
    ],
)
def test_bad_node_config_is_a_clear_error(
    node_config: dict[str, str], match: str, fake_client: type[FakeClient]
) -> None:
    reply = build_client_app()(_message("train", 0), _context(node_config))  # type: ignore[arg-type]
    assert reply.has_error()
    assert re.search(match, str(reply.error.reason)), str(reply.error.reason)


def test_a_site_hands_its_client_its_public_images_and_its_noise_key(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    import dataclasses

    from feddymem.federation.client_app import _open_client, client_noise_key
    from feddymem.federation.runconfig import site_settings

    settings = site_settings(
        {
            "name": "site-a",
            "data": str(trees["alpha"]),
            "public": str(trees["gamma"]),
            "work-dir": str(tmp_path / "work"),
        },
        {},
        defaults={},
    )
    instructions = wire.Instructions(round_idx=0, num_rounds=2, run_name="fed", run_id="r1")
    data, client, _ = _open_client(settings, config=CONFIG, instructions=instructions)
    assert isinstance(client, FakeClient)
    assert client.public == list(data.public) and len(client.public) > 0
    assert all(s.label == 0 for s in client.public)
    # and a secret of its own for its noise, the same in every message of the run
    _, again, folder = _open_client(settings, config=CONFIG, instructions=instructions)
    assert client.noise_key > 0 and again.noise_key == client.noise_key
    assert (folder / "noise.key").is_file()
    # a simulated client (the server's own operator runs every site) seeds by the config alone
    simulated = dataclasses.replace(settings, name=None, partition_id=0, spec=tmp_path / "x")
    assert client_noise_key(simulated, tmp_path / "sim") == 0
    assert not (tmp_path / "sim" / "noise.key").exists()
