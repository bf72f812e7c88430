"""Small stand-ins for the federation tests: a fake FedDyMem client, an in-process Grid, data.

`FakeClient` keeps the real client's contract (state on disk under `state_dir`, `rounds_done`,
a finished round replays its stored memory) but its "training" is cheap arithmetic, so a round
loop with several clients runs in milliseconds. `InProcessGrid` delivers every message to a
ClientApp in this process, through Flower's protobuf serialisation both ways, as a SuperLink
would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from PIL import Image

from feddymem.config import FedDyMemConfig
from feddymem.federation.client_app import build_client_app
from feddymem.federation.limits import expected_dim
from feddymem.federation.runconfig import ServerSettings
from feddymem.federation.server_app import serve
from feddymem.method.reduce import ReducedMemory

# d as the server expects it from the spec's model (write_spec's default: Lite0's default taps)
DIM = expected_dim(FedDyMemConfig(image_size=64, client_memory_size=5))
ITEMS = 5


@dataclass(frozen=True)
class FakeMetrics:
    image_auroc: float
    f1_max: float
    pixel_auroc: float | None
    aupro: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "image_auroc": self.image_auroc,
            "f1_max": self.f1_max,
            "pixel_auroc": self.pixel_auroc,
            "aupro": self.aupro,
        }


class Faults:
    """Misbehaviour to inject: client name -> (round, kind). Kinds: nan, inf, shape, dim,
    short (d = 1), unavailable (the SuperLink answers that the node is gone), float64, zero_weight, weight_count, no_images, too_many, huge (items near
    1e30), poison (items near 1e20), heavy (one 1e19 vector with weight 3e38), raise, silent."""

    plan: dict[str, tuple[int, str]] = {}  # noqa: RUF012 (reset by the fixture)
    calls: list[tuple[str, str, int]] = []  # noqa: RUF012 (name, kind of call, round)

    @classmethod
    def kind(cls, name: str, round_idx: int) -> str | None:
        planned = cls.plan.get(name)
        return planned[1] if planned and planned[0] == round_idx else None


class FakeClient:
    """The FedDyMemClient contract with arithmetic instead of a network.

    State file: ``state.json`` with `rounds_done`, the "generator" offset and the last memory.
    Round t: offset <- offset + 0.5 * mean(M_g) (when given); M_k = offset + a per-client
    pattern; a round already done returns the stored memory (as the real client does).
    """

    def __init__(
        self,
        *,
        train: Sequence[Any],
        test: Sequence[Any],
        config: FedDyMemConfig,
        state_dir: Path,
        feature_cache: Path | None = None,
        public: Sequence[Any] = (),
        noise_key: int = 0,
    ) -> None:
        if not train:
            raise ValueError("a FedDyMem client needs at least one normal training image")
        self.public = list(public)
        self.noise_key = noise_key
        self.train = list(train)
        self.test = list(test)
        self.config = config
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.name = self.state_dir.parent.name
        self.rounds_done = -1
        self.offset = 0.0
        self.memory: list[list[float]] | None = None
        state = self.state_dir / "state.json"
        if state.is_file():
            saved = json.loads(state.read_text())
            self.rounds_done = saved["rounds_done"]
            self.offset = saved["offset"]
            self.memory = saved["memory"]

    @property
    def dim(self) -> int:
        return DIM

    def _save(self) -> None:
        state = {"rounds_done": self.rounds_done, "offset": self.offset, "memory": self.memory}
        (self.state_dir / "state.json").write_text(json.dumps(state))

    def fit_round(
        self, *, round_idx: int, global_memory: torch.Tensor | None
    ) -> tuple[ReducedMemory, dict[str, float]]:
        Faults.calls.append((self.name, "train", round_idx))
        kind = Faults.kind(self.name, round_idx)
        if kind == "raise":
            raise RuntimeError(f"injected failure in round {round_idx}")
        if round_idx <= self.rounds_done and self.memory is not None:
            vectors = torch.tensor(self.memory, dtype=torch.float32)
            return self._pack(vectors), {"replayed": 1.0}
        if global_memory is not None:
            self.offset += 0.5 * float(global_memory.mean())
        seed = sum(map(ord, self.name)) + 7 * self.config.seed
        pattern = torch.from_numpy(
            np.random.default_rng(seed).normal(size=(ITEMS, DIM)).astype(np.float32)
        )
        vectors = pattern + self.offset + round_idx
        self.memory = vectors.tolist()
        self.rounds_done = round_idx
        self._save()
        memory = self._pack(vectors)
        return _corrupt(memory, kind), {
            "loss": float(self.offset),
            "n_images": float(len(self.train)),
        }

    def _pack(self, vectors: torch.Tensor) -> ReducedMemory:
        weights = torch.full((vectors.shape[0],), float(len(self.train)), dtype=torch.float32)
        return ReducedMemory(vectors=vectors, weights=weights, n_images=len(self.train))

    def evaluate(self, global_memory: torch.Tensor) -> FakeMetrics:
        Faults.calls.append((self.name, "evaluate", self.rounds_done))
        if Faults.kind(self.name, -1) == "raise":
            raise RuntimeError("injected evaluation failure")
        score = 0.5 + 0.4 * float(torch.sigmoid(global_memory.mean() + self.offset))
        has_masks = any(getattr(s, "mask_path", None) for s in self.test)
        return FakeMetrics(
            image_auroc=score,
            f1_max=score - 0.1,
            pixel_auroc=score if has_masks else None,
            aupro=score - 0.2 if has_masks else None,
        )

    def evaluate_at_threshold(
        self, global_memory: torch.Tensor
    ) -> tuple[FakeMetrics, dict[str, float]]:
        """`evaluate` and a made-up operating point at the site's threshold."""
        metrics = self.evaluate(global_memory)
        return metrics, {
            "threshold": 1.0,
            "recall_at_threshold": metrics.image_auroc - 0.3,
            "false_alarm_rate_at_threshold": 0.02,
            "test_normals": 50.0,
            "false_alarm_rate_ci95_low": 0.0004,
            "false_alarm_rate_ci95_high": 0.1066,
            "calibration_normals": 12.0,
        }

    def export(
        self, global_memory: torch.Tensor, path: Path, *, provenance: dict[str, Any] | None = None
    ) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(
            {"global_memory": global_memory, "offset": self.offset, "provenance": provenance}, tmp
        )
        tmp.replace(path)
        return path


def _corrupt(memory: ReducedMemory, kind: str | None) -> ReducedMemory:
    v, w, n = memory.vectors.clone(), memory.weights.clone(), memory.n_images
    if kind is None or kind == "silent":
        return memory
    if kind == "nan":
        v[1, 2] = float("nan")
    elif kind == "inf":
        v[0, 0] = float("inf")
    elif kind == "shape":
        v = v.reshape(1, -1, DIM)
    elif kind == "dim":
        v = torch.cat([v, v[:, :1]], dim=1)
    elif kind == "short":
        v = v[:, :1].contiguous()
    elif kind == "huge":
        v = v * 1e30
    elif kind == "poison":
        v = v + 1e20
    elif kind == "heavy":
        v[0] = 1e19
        w[0] = 3e38
    elif kind == "float64":
        v = v.double()
    elif kind == "zero_weight":
        w[0] = 0.0
    elif kind == "weight_count":
        w = w[:-1]
    elif kind == "no_images":
        n = 0
    elif kind == "too_many":
        v = v.repeat(100, 1)
        w = w.repeat(100)
    else:
        raise AssertionError(kind)
    return ReducedMemory(vectors=v, weights=w, n_images=n)


class InterruptedRun(BaseException):
    """Raised by the grid to cut a run short (a crash of the server process)."""


class InProcessGrid:
    """A Grid whose nodes are ClientApps in this process; messages go through protobuf.

    `contexts` maps node id -> the Context its ClientApp sees. A node whose client is planned
    "silent" for a round never replies (as a dead client). `crash_before_round` raises
    InterruptedRun when that round's train messages are sent (after the clients processed
    them when `crash_after_clients` is set: the server dies before it sees the replies).
    """

    def __init__(
        self,
        app: ClientApp,
        contexts: dict[int, Context],
        *,
        names: dict[int, str],
        crash_before_round: int | None = None,
        crash_after_clients: bool = False,
    ) -> None:
        self.app = app
        self.contexts = contexts
        self.names = names
        self.crash_before_round = crash_before_round
        self.crash_after_clients = crash_after_clients
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.timeouts: list[float | None] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        self.timeouts.append(timeout)
        batch = list(messages)
        round_idx = _round_of(batch[0]) if batch else None
        crash = (
            batch
            and batch[0].metadata.message_type == "train"
            and round_idx == self.crash_before_round
        )
        if crash and not self.crash_after_clients:
            raise InterruptedRun(f"server crashed before round {round_idx}")
        replies = []
        for message in batch:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as Flower's grids do
            wired = message_from_proto(message_to_proto(message))
            self.sent.append(wired)
            node = wired.metadata.dst_node_id
            context = self.contexts[node]
            name = self.names[node]
            if (
                wired.metadata.message_type == "train"
                and Faults.kind(name, round_idx or 0) == "silent"
            ):
                continue
            if Faults.kind(name, round_idx or 0) == "unavailable":
                # the SuperLink's own reply for a node whose heartbeat stopped
                reply = create_message_error_unavailable_res_message(wired.metadata, "node")
                self.received.append(reply)
                replies.append(reply)
                continue
            reply = self.app(wired, context)
            reply = message_from_proto(message_to_proto(reply))
            self.received.append(reply)
            replies.append(reply)
        if crash:
            raise InterruptedRun(f"server crashed after the clients did round {round_idx}")
        return replies


def _round_of(message: Message) -> int | None:
    content = message.content
    if "instructions" in content:
        return int(content["instructions"]["round"])  # type: ignore[arg-type]
    return None


def simulated_contexts(count: int, *, first_node: int = 1000) -> dict[int, Context]:
    """Node contexts as Flower's simulation makes them (partition-id, num-partitions)."""
    return {
        first_node + i: Context(
            run_id=1,
            node_id=first_node + i,
            node_config={"partition-id": i, "num-partitions": count},
            state=RecordDict(),
            run_config={},
        )
        for i in range(count)
    }


def make_tree(
    root: Path, *, n_train: int = 4, n_good: int = 2, n_bad: int = 2, size: int = 16, seed: int = 0
) -> Path:
    """A minimal MVTec-layout tree of random images (for tests that never decode them)."""
    rng = np.random.default_rng(seed)
    for folder in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (root / folder).mkdir(parents=True, exist_ok=True)

    def save(path: Path) -> None:
        Image.fromarray(rng.integers(0, 255, size=(size, size), dtype=np.uint8)).save(path)

    for i in range(n_train):
        save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        save(root / "test" / "good" / f"{i:03d}.png")
    for i in range(n_bad):
        save(root / "test" / "scratch" / f"{i:03d}.png")
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[2:6, 2:6] = 255
        Image.fromarray(mask).save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


def write_spec(
    path: Path,
    *,
    clients: dict[str, list[str]],
    rounds: int = 2,
    min_clients: int = 2,
    model: str = "image_size = 64\nclient_memory_size = 5",
    extra: str = "",
) -> Path:
    """A federation spec TOML with explicit clients."""
    lines = [
        "[federation]",
        'name = "test-fed"',
        f"rounds = {rounds}",
        f"min_clients = {min_clients}",
        "seed = 3",
        "round_timeout_s = 30",
        "connect_timeout_s = 5",
        extra,
        "",
        "[model]",
        model,
        "",
    ]
    for name, roots in clients.items():
        lines += ["[[clients]]", f'name = "{name}"', f"data = {json.dumps(roots)}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Federation:
    """A spec, a work folder and an in-process federation of simulated nodes over it."""

    def __init__(self, root: Path, trees: dict[str, Path], **spec_options: Any) -> None:
        self.root = root
        clients = spec_options.pop("clients", None) or {n: [str(p)] for n, p in trees.items()}
        self.spec = write_spec(root / "spec.toml", clients=clients, **spec_options)
        self.names = list(clients)

    def run(
        self, out: Path, *, resume: bool = False, **grid_options: Any
    ) -> tuple[dict[str, Any], InProcessGrid]:
        defaults = {"spec": str(self.spec), "out": str(out), "work-dir": str(out / "clients")}
        app = build_client_app(defaults=defaults)
        contexts = simulated_contexts(len(self.names))
        names = {node: self.names[c.node_config["partition-id"]] for node, c in contexts.items()}  # type: ignore[index]
        grid = InProcessGrid(app, contexts, names=names, **grid_options)
        settings = ServerSettings(spec=self.spec, out=out, resume=resume)
        return serve(grid, settings), grid  # type: ignore[arg-type]


def make_texture_site(
    root: Path,
    *,
    texture: str,
    n_train: int = 10,
    n_good: int = 4,
    n_bad: int = 4,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """An MVTec-layout site of real detection work: crops of a scikit-image CC0 texture, with
    bright / dark discs (exact masks) as anomalies."""
    from tests.conftest import make_texture_tree

    return make_texture_tree(
        root, n_train=n_train, n_good=n_good, n_bad=n_bad, size=size, seed=seed, texture=texture
    )


def smoke_federation(folder: Path) -> Path:
    """configs/smoke.toml copied into `folder`, with its two sites generated next to it."""
    repo = Path(__file__).resolve().parents[2]
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "smoke.toml"
    spec.write_text((repo / "configs" / "smoke.toml").read_text(encoding="utf-8"), encoding="utf-8")
    make_texture_site(folder / "data" / "site-a", texture="brick", seed=1)
    make_texture_site(folder / "data" / "site-b", texture="gravel", seed=2)
    return spec
