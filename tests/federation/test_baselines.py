"""The parameter-sharing baselines (FedAvg / FedProx of G with a local memory, FedAE).

Handlers called directly with Flower Messages (real clients on a tiny texture tree), the server's
round loop on an in-process grid (fake clients: what travels, NaN replies dropped), and one real
simulation on Flower's engine (Ray).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity
from tests.conftest import make_texture_tree

from feddymem.config import FedDyMemConfig, to_dict
from feddymem.data import scan
from feddymem.detect.autoencoder import FeatureAutoencoder
from feddymem.federation import wire
from feddymem.federation.baselines import client_app as param_client
from feddymem.federation.baselines import wire as param_wire
from feddymem.federation.baselines.client_app import build_param_client_app
from feddymem.federation.baselines.clients import GeneratorSharingClient
from feddymem.federation.baselines.methods import DEFAULT_PROXIMAL_MU, run_param_sharing
from feddymem.federation.baselines.server_app import GLOBAL_MODEL_FILE, serve_param_sharing
from feddymem.federation.baselines.settings import (
    ParamSettings,
    autoencoder_config,
    feature_channels,
)
from feddymem.federation.server_app import FederationError
from feddymem.federation.spec import SpecError
from feddymem.method.generator import MemoryGenerator
from feddymem.metrics import DetectionMetrics

CONFIG = FedDyMemConfig(
    image_size=64,
    batch_size=8,
    client_memory_size=32,
    kmeans_iterations=3,
    train_batch_size=4,
    local_epochs=1,
    seed=3,
)
GEN_KEYS = {"conv.weight", "conv.bias"}
NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Flower stamps new messages with the running task's identity; set one as a ServerApp has."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny MVTec-layout sites (64 px crops of CC0 textures with disc anomalies)."""
    root = tmp_path_factory.mktemp("sites")
    for i, (name, texture) in enumerate(zip(NAMES, ("brick", "gravel", "grass"), strict=True)):
        make_texture_tree(root / name, n_train=8, n_good=4, n_bad=4, seed=i + 1, texture=texture)
    return root


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patch features shared by the tests of this module (as a benchmark shares them)."""
    return tmp_path_factory.mktemp("feature-cache")


def _spec(
    folder: Path, sites: Path, names: Iterable[str], *, rounds: int = 2, min_clients: int = 2
) -> Path:
    """A spec TOML over the given sites (64 px, tiny memories, one local epoch)."""
    lines = [
        "[federation]",
        'name = "ps-test"',
        f"rounds = {rounds}",
        f"min_clients = {min_clients}",
        "seed = 3",
        "round_timeout_s = 300",
        "connect_timeout_s = 60",
        "",
        "[model]",
        "image_size = 64",
        "batch_size = 8",
        "client_memory_size = 32",
        "kmeans_iterations = 3",
        "train_batch_size = 4",
        "local_epochs = 1",
        "",
    ]
    for name in names:
        lines += ["[[clients]]", f'name = "{name}"', f'data = ["{sites / name}"]', ""]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _context(node: int, partition: int, count: int) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config={"partition-id": partition, "num-partitions": count},
        state=RecordDict(),
        run_config={},
    )


def _orders(method: param_wire.Method, phase: param_wire.Phase, round_idx: int) -> RecordDict:
    orders = param_wire.Orders(
        method=method,
        phase=phase,
        round_idx=round_idx,
        num_rounds=2,
        run_name="ps-test",
        run_id="r1",
        proximal_mu=0.5 if method == "fedprox" else 0.0,
        config=CONFIG,
        autoencoder=to_dict(autoencoder_config(CONFIG)) if method == "fedae" else None,
    )
    return RecordDict({param_wire.CONFIG: param_wire.orders_to_record(orders)})


def _initial_generator() -> dict[str, torch.Tensor]:
    return MemoryGenerator(in_channels=feature_channels(CONFIG), seed=CONFIG.seed).state_dict()


Tamper = Callable[[int, Message, Message], Message]


class InProcessGrid:
    """Nodes are ClientApps in this process; every message goes through Flower's protobuf both
    ways (as through a SuperLink). `tamper(node, request, reply)` may rewrite a reply before the server
    sees it; all messages are recorded."""

    def __init__(self, app: ClientApp, count: int, *, tamper: Tamper | None = None) -> None:
        self.app = app
        self.contexts = {1000 + i: _context(1000 + i, i, count) for i in range(count)}
        self.tamper = tamper
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            wired = message_from_proto(message_to_proto(message))
            self.sent.append(wired)
            node = wired.metadata.dst_node_id
            reply = self.app(wired, self.contexts[node])
            if self.tamper is not None:
                reply = self.tamper(node, wired, reply)
            reply = message_from_proto(message_to_proto(reply))
            self.received.append(reply)
            replies.append(reply)
        return replies


class FakeSharingClient:
    """A parameter-sharing client with arithmetic instead of a network: fit adds 0.01 * (k + 1)
    to every weight; evaluation returns fixed metrics."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index

    @property
    def n_images(self) -> int:
        return 4 + self.index

    def fit_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, proximal_mu: float
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        step = 0.01 * (self.index + 1)
        return {k: v + step for k, v in global_state.items()}, {"loss": 1.0 / round_idx}

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean k, variance k + 1 in every channel, over 10 * (k + 1) patch vectors."""
        dim, k = feature_channels(CONFIG), float(self.index)
        mean = torch.full((dim,), k, dtype=torch.float64)
        return mean, mean.square() + k + 1.0, 10 * (self.index + 1)

    def evaluate_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, model_file: Path | None
    ) -> DetectionMetrics:
        return DetectionMetrics(
            image_auroc=0.8 + 0.01 * self.index,
            f1_max=0.7,
            pixel_auroc=None,
            aupro=None,
            n_normal=2,
            n_anomalous=2,
            n_pixel_images=0,
        )


@pytest.fixture
def fake_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap the real local models for `FakeSharingClient` (the server loop stays real)."""
    real_open = param_client._open

    def fake_open(site: Any, orders: param_wire.Orders) -> tuple[Any, Any, Path]:
        data = param_client.client_data(site)
        names = ["alpha", "beta", "gamma"]
        folder = site.work_dir / data.name
        folder.mkdir(parents=True, exist_ok=True)
        return data, FakeSharingClient(data.name, names.index(data.name)), folder

    monkeypatch.setattr(param_client, "_open", fake_open)
    assert real_open is not fake_open


def _serve(
    spec: Path, out: Path, method: param_wire.Method, count: int, *, tamper: Tamper | None = None
) -> InProcessGrid:
    app = build_param_client_app(defaults={"spec": str(spec), "work-dir": str(out / "clients")})
    in_process = InProcessGrid(app, count, tamper=tamper)
    settings = ParamSettings(spec=spec, out=out, method=method, proximal_mu=0.1)
    serve_param_sharing(in_process, settings)  # type: ignore[arg-type]
    return in_process


# ----------------------------------------------------------------------------------------------
# the wire


def test_orders_round_trip_and_updates_are_checked() -> None:
    content = _orders("fedprox", "train", 2)
    orders = param_wire.orders_from_content(content)
    assert (orders.method, orders.phase, orders.round_idx, orders.proximal_mu) == (
        "fedprox",
        "train",
        2,
        0.5,
    )
    assert orders.config == CONFIG

    good = param_wire.state_to_record(_initial_generator())
    expected = {k: (good[k].numpy().shape, good[k].numpy().dtype) for k in good}
    param_wire.check_update(good, expected)
    bad = _initial_generator()
    bad["conv.bias"][3] = float("nan")
    with pytest.raises(param_wire.UpdateRejected, match="NaN"):
        param_wire.check_update(param_wire.state_to_record(bad), expected)
    extra = ArrayRecord({**{k: good[k] for k in good}, "memory": Array(np.zeros((4, 2)))})
    with pytest.raises(param_wire.UpdateRejected, match="unexpected"):
        param_wire.check_update(extra, expected)
    scalar = param_wire.state_from_record(param_wire.state_to_record({"n": torch.tensor(3.0)}))
    assert scalar["n"].shape == ()  # 0-d buffers keep their shape on the wire
    wrong = _initial_generator()
    wrong["conv.bias"] = wrong["conv.bias"][:-1]
    with pytest.raises(param_wire.UpdateRejected, match="shape"):
        param_wire.check_update(param_wire.state_to_record(wrong), expected)


# ----------------------------------------------------------------------------------------------
# handlers, real local models


def test_train_and_evaluate_handlers_fedprox(
    sites: Path, feature_cache: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    app = build_param_client_app(
        defaults={
            "spec": str(spec),
            "work-dir": str(tmp_path / "work"),
            "feature-cache": str(feature_cache),
        }
    )
    context = _context(7, 0, 2)
    sent = _initial_generator()
    content = _orders("fedprox", "train", 1)
    content[param_wire.ARRAYS] = param_wire.state_to_record(sent)
    reply = app(Message(content, dst_node_id=7, message_type="train"), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.keys()) == {param_wire.ARRAYS, wire.METRICS, wire.CLIENT}
    assert wire.identity_from_content(reply.content).name == "alpha"
    back = param_wire.state_from_record(reply.content.array_records[param_wire.ARRAYS])
    assert set(back) == GEN_KEYS
    assert all(back[k].shape == sent[k].shape for k in GEN_KEYS)
    assert not torch.equal(back["conv.weight"], sent["conv.weight"])  # G was trained
    metrics = wire.metrics_from_content(reply.content)
    assert metrics[param_wire.NUM_EXAMPLES] == 8  # too few normals to hold some out
    assert metrics["loss_prox"] >= 0 and "memory_items" in metrics

    content = _orders("fedprox", "evaluate", 2)
    content[param_wire.ARRAYS] = param_wire.state_to_record(back)
    reply = app(Message(content, dst_node_id=7, message_type="evaluate"), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content.array_records == {}  # metrics only
    metrics = wire.metrics_from_content(reply.content)
    assert metrics["image_auroc"] > 0.7 and metrics["n_test"] == 8
    model_file = wire.identity_from_content(reply.content).model_file
    assert model_file is not None and Path(model_file).is_file()


def test_fedprox_term_keeps_g_closer_to_the_global_weights(
    sites: Path, feature_cache: Path, tmp_path: Path
) -> None:
    split = scan(sites / "alpha")
    start = _initial_generator()
    start = {
        k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0))
        for k, v in start.items()
    }

    def drift(mu: float) -> float:
        client = GeneratorSharingClient(
            train=split.train,
            test=split.test,
            config=CONFIG,
            state_dir=tmp_path / f"mu{mu}",
            feature_cache=feature_cache,
        )
        state, _ = client.fit_local(start, round_idx=1, proximal_mu=mu)
        return float(sum((state[k] - start[k]).pow(2).sum() for k in GEN_KEYS))

    # At the default mu the proximal term must hold G back measurably (it did not at the old
    # default, where FedProx equalled FedAvg), and more with a larger mu.
    free, default, strong = drift(0.0), drift(DEFAULT_PROXIMAL_MU), drift(10 * DEFAULT_PROXIMAL_MU)
    assert default < 0.97 * free
    assert strong < default


def test_fedae_handlers_stats_then_train(sites: Path, feature_cache: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    app = build_param_client_app(
        defaults={
            "spec": str(spec),
            "work-dir": str(tmp_path / "work"),
            "feature-cache": str(feature_cache),
        }
    )
    context = _context(7, 0, 2)
    content = _orders("fedae", "stats", 0)
    content[param_wire.ARRAYS] = ArrayRecord()
    reply = app(Message(content, dst_node_id=7, message_type="train"), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    stats = reply.content.array_records[param_wire.ARRAYS]
    assert set(stats.keys()) == param_wire.STATS_KEYS
    dim = feature_channels(CONFIG)
    assert stats[param_wire.STAT_MEAN].numpy().shape == (dim,)
    count = wire.metrics_from_content(reply.content)[param_wire.NUM_EXAMPLES]
    assert count == 8 * 8 * 8  # 8 training images, an 8 x 8 grid at 64 px

    mean, var = param_wire.stats_from_record(stats)
    ae_cfg = autoencoder_config(CONFIG)
    model = FeatureAutoencoder(dim, hidden=ae_cfg.hidden, latent=ae_cfg.latent, seed=ae_cfg.seed)
    with torch.no_grad():
        model.feature_mean.copy_(mean.float().view(1, -1, 1, 1))
        model.feature_std.copy_(var.sqrt().clamp_min(1e-3).float().view(1, -1, 1, 1))
        model.norm_count.fill_(count)
    sent = model.state_dict()
    content = _orders("fedae", "train", 1)
    content[param_wire.ARRAYS] = param_wire.state_to_record(sent)
    reply = app(Message(content, dst_node_id=7, message_type="train"), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    back = param_wire.state_from_record(reply.content.array_records[param_wire.ARRAYS])
    assert set(back) == set(sent)
    assert torch.equal(back["feature_mean"], sent["feature_mean"])  # the shared standardisation
    assert not torch.equal(back["decoder.2.weight"], sent["decoder.2.weight"])


# ----------------------------------------------------------------------------------------------
# the server loop (fake local models, in-process grid)


def test_messages_carry_weights_metrics_and_names_only(
    fake_clients: None, sites: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    out = tmp_path / "out"
    grid = _serve(spec, out, "fedprox", 2)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["rejected"] == []
    sizes = {k: tuple(v.shape) for k, v in _initial_generator().items()}
    for message in [*grid.sent, *grid.received]:
        content = message.content
        assert set(content.keys()) <= {param_wire.ARRAYS, param_wire.CONFIG, wire.CLIENT, "metrics"}
        for arrays in content.array_records.values():
            # only G's two tensors (or nothing, in evaluation replies): no image, feature, memory
            assert {k: tuple(arrays[k].numpy().shape) for k in arrays} == sizes
        for config in content.config_records.values():
            assert not any(isinstance(value, bytes) for value in config.values())
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count("train") == 4 and kinds.count("evaluate") == 2
    assert all(
        "proximal-mu" in m.content[param_wire.CONFIG]
        for m in grid.sent
        if m.metadata.message_type == "train"
    )

    # FedAvg's weighted average of the two clients' steps (n = 4 and 5): 0.01 * (4 + 2 * 5) / 9
    saved = torch.load(out / GLOBAL_MODEL_FILE, weights_only=True)["state"]
    step = 2 * 0.01 * (4 * 1 + 5 * 2) / 9
    assert torch.allclose(saved["conv.bias"], _initial_generator()["conv.bias"] + step, atol=1e-5)
    for name in ("alpha", "beta"):
        per_round = results["bytes"]["per_client_per_round"][name]
        assert sorted(per_round) == ["1", "2"]
        assert all(
            r["up"] > 4 * 152 * 154 and r["down"] > 4 * 152 * 154 for r in per_round.values()
        )
        assert results["clients"][name]["image_auroc"] is not None
    assert results["settings"]["method"]["strategy"] == "FedProx"
    assert len(results["wall_s"]["per_round"]) == 2


def test_fedae_pools_feature_statistics_in_round_zero(
    fake_clients: None, sites: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    out = tmp_path / "out"
    grid = _serve(spec, out, "fedae", 2)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["rounds_completed"] == 2
    assert [r["phase"] for r in results["rounds"]] == ["stats", "train", "train"]
    assert sorted(results["bytes"]["per_client_per_round"]["alpha"]) == ["0", "1", "2"]
    stats_replies = [m for m in grid.received if m.metadata.group_id == "round-0"]
    assert len(stats_replies) == 2
    for reply in stats_replies:  # two (D,) vectors, nothing else
        assert set(reply.content.array_records[param_wire.ARRAYS].keys()) == param_wire.STATS_KEYS

    # pooled over 10 + 20 patch vectors: mean 2/3, E[x^2] = (1 * 10 + 3 * 20) / 30
    state = torch.load(out / GLOBAL_MODEL_FILE, weights_only=True)["state"]
    assert torch.allclose(state["feature_mean"], torch.tensor(2 / 3))
    assert torch.allclose(state["feature_std"], torch.tensor((7 / 3 - 4 / 9) ** 0.5))
    assert state["norm_count"].shape == () and float(state["norm_count"]) == 30.0  # kept exactly
    ae = autoencoder_config(CONFIG)
    start = FeatureAutoencoder(
        feature_channels(CONFIG), hidden=ae.hidden, latent=ae.latent, seed=ae.seed
    ).state_dict()
    step = 2 * 0.01 * (4 * 1 + 5 * 2) / 9  # two rounds of FedAvg over steps 0.01 and 0.02
    assert torch.allclose(state["decoder.2.bias"], start["decoder.2.bias"] + step, atol=1e-5)
    assert results["settings"]["method"]["autoencoder"]["epochs"] == CONFIG.local_epochs


def test_a_nan_reply_is_dropped_and_the_run_goes_on(
    fake_clients: None, sites: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta", "gamma"])
    out = tmp_path / "out"

    def poison(node: int, request: Message, reply: Message) -> Message:
        if node == 1001 and request.metadata.message_type == "train":
            arrays = reply.content.array_records[param_wire.ARRAYS]
            state = param_wire.state_from_record(arrays)
            state["conv.weight"][0, 0, 0, 0] = float("nan")
            reply.content[param_wire.ARRAYS] = param_wire.state_to_record(state)
        return reply

    _serve(spec, out, "fedavg", 3, tamper=poison)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    [dropped] = results["rejected"]
    assert dropped["client"] == "beta" and dropped["round"] == 1 and "NaN" in dropped["reason"]
    assert results["evaluated_clients"] == ["alpha", "gamma"]
    assert results["clients"]["beta"]["active"] is False
    assert sorted(results["bytes"]["per_client_per_round"]["beta"]) == ["1"]  # stays out
    saved = torch.load(out / GLOBAL_MODEL_FILE, weights_only=True)["state"]
    assert torch.isfinite(saved["conv.weight"]).all()


def test_below_min_clients_fails_with_results(
    fake_clients: None, sites: Path, tmp_path: Path
) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    out = tmp_path / "out"

    def fail(node: int, request: Message, reply: Message) -> Message:
        if node == 1000 and request.metadata.message_type == "train":
            return Message(Error(code=100, reason="injected"), reply_to=request)
        return reply

    with pytest.raises(FederationError, match="min_clients is 2"):
        _serve(spec, out, "fedavg", 2, tamper=fail)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and "min_clients" in results["error"]
    assert results["rejected"][0]["reason"] == "client error: injected"


def test_bad_options_fail_before_the_engine_starts(sites: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    with pytest.raises(SpecError, match="unknown method"):
        run_param_sharing(spec, tmp_path / "out", method="fedsgd")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="proximal_mu"):
        run_param_sharing(spec, tmp_path / "out", method="fedprox", proximal_mu=-1.0)


# ----------------------------------------------------------------------------------------------
# one real simulation (Flower's engine on Ray)


@pytest.mark.slow
def test_fedprox_simulation_two_clients_two_rounds(sites: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "fed", sites, ["alpha", "beta"])
    out = tmp_path / "out"
    results = run_param_sharing(spec, out, method="fedprox", proximal_mu=0.01, num_cpus=2)

    assert results["status"] == "completed" and results["error"] is None
    assert results["rounds_completed"] == 2 and results["rejected"] == []
    assert results["evaluated_clients"] == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        client = results["clients"][name]
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
            assert isinstance(client[key], float), (name, key, client)
        assert client["image_auroc"] > 0.7, client
        assert client["n_test"] == 8 and client["bytes_up"] > 0 and client["bytes_down"] > 0
        per_round = results["bytes"]["per_client_per_round"][name]
        assert sorted(per_round) == ["1", "2"]
        assert all(r["up"] > 0 and r["down"] > 0 for r in per_round.values())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert isinstance(results["mean"][key], float)
    assert len(results["wall_s"]["per_round"]) == 2 and results["wall_s"]["total"] > 0
    assert results["settings"]["method"]["proximal_mu"] == 0.01
    assert results["settings"]["model"]["image_size"] == 64
    final = torch.load(out / GLOBAL_MODEL_FILE, weights_only=True)["state"]
    start = _initial_generator()
    assert set(final) == GEN_KEYS
    assert not torch.allclose(final["conv.weight"], start["conv.weight"])  # G moved
