"""The methods of the comparison table, registered by name; each runs one (data set, seed).

Every method reads the clients of a federation spec (one data set = one spec: its clients and
their MVTec-layout roots), uses the same backbone, feature taps, input size, anomaly maps and
metrics, and scores each client on that client's own test split:

local-only    ``local-patchcore``, ``local-cfa`` (a FedDyMem client alone: its own memory),
              ``local-padim`` (a Gaussian per position, Mahalanobis distance)
centralised   ``central-patchcore``, ``central-cfa``: one model on the pooled training images
              (what a site would get if every site shipped its images to one place)
parameters    ``fedavg`` / ``fedprox`` over the generator's weights with a local memory, and
              ``fedae`` (a feature autoencoder trained with FedAvg): Flower simulations
statistics    ``fed-padim``: per-position count, sum and sum of outer products of the patch
              features, summed by the server (= PaDiM on the pooled images): a Flower simulation
levers        ``feddymem-own-memory`` (score against M_g and the own M_k), ``-fp16`` (memories
              travel as float16), ``-fp16-2x`` (twice the items in the same bytes), ``-fp16-2x-own``
FedDyMem      ``feddymem`` and its ablations ``feddymem-no-generator``, ``-no-metric-loss``,
              ``-no-dynamic-memory``, ``-no-reduce``, ``-kmeans-reduce``, ``-mean-server``:
              Flower simulations

Bytes are per client per training round (both directions, measured on the wire by the
federated apps). Centralised rows count the training images' files a site would upload, once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feddymem.config import DetectorConfig, FeatureConfig, FedDyMemConfig, from_dict
from feddymem.detect.dataset_scores import DatasetScores
from feddymem.detect.detector import PatchCoreDetector
from feddymem.federation.client_data import ClientData, load_client_data
from feddymem.federation.spec import load_spec
from feddymem.metrics import DetectionMetrics

__all__ = ["METHODS", "Method", "Outcome", "Task", "client_data"]

log = logging.getLogger(__name__)

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


@dataclass(frozen=True)
class Task:
    """One (method, data set, seed) to run.

    Attributes:
        dataset: Data-set name (the table's column).
        spec_path: Federation spec TOML naming the clients and their data.
        seed: Seed of every random step of the method (data stay fixed across seeds).
        rounds: Training rounds R of the federated methods (local CFA: R local rounds).
        model: FedDyMemConfig options shared by every method (image size, memory size, ...).
        work: This row's own output folder.
        feature_cache: Folder of patch features shared by every row on the same files.
    """

    dataset: str
    spec_path: Path
    seed: int
    rounds: int
    model: Mapping[str, Any]
    work: Path
    feature_cache: Path


@dataclass
class Outcome:
    """Per-client results of one method on one data set.

    Attributes:
        clients: client name -> metrics (`METRIC_KEYS`, None where not computable).
        scores: client name -> (labels (N,), image scores (N,)) for ROC curves, where known.
        bytes_up / bytes_down: mean bytes per client per training round (0: nothing sent).
        rounds: training rounds that sent something (0 for local-only).
    """

    clients: dict[str, dict[str, float | None]] = field(default_factory=dict)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    bytes_up: float = 0.0
    bytes_down: float = 0.0
    rounds: int = 0

    def add(self, name: str, metrics: DetectionMetrics, scores: DatasetScores | None) -> None:
        values = metrics.as_dict()
        self.clients[name] = {k: _float(values[k]) for k in METRIC_KEYS}
        if scores is not None:
            self.scores[name] = (scores.labels.copy(), scores.image_scores.copy())


@dataclass(frozen=True)
class Method:
    """A registered method: its family (the table groups by it) and how it runs one task."""

    name: str
    family: str
    federated: bool
    run: Callable[[Task], Outcome]
    description: str


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def client_data(spec_path: Path) -> list[ClientData]:
    """Every client's training normals and test split, as the federation would load them."""
    spec = load_spec(spec_path)
    return [load_client_data(spec, i) for i in range(spec.num_clients)]


def fed_config(task: Task, **overrides: Any) -> FedDyMemConfig:
    """The task's FedDyMem options with this method's overrides and the task's seed."""
    return from_dict(
        FedDyMemConfig, {**task.model, **overrides, "seed": task.seed}, where="bench model"
    )


def detector_config(task: Task, **overrides: Any) -> DetectorConfig:
    """A PatchCore config on the same features (the FeatureConfig part of the task's model)."""
    shared = {f.name for f in dataclasses.fields(FeatureConfig)}
    values = {k: v for k, v in task.model.items() if k in shared}
    return from_dict(
        DetectorConfig, {**values, **overrides, "seed": task.seed}, where="bench model"
    )


# --------------------------------------------------------------------------------------------
# local-only and centralised


def _pooled(clients: list[ClientData]) -> list[Any]:
    return [s for c in clients for s in c.train]


def _upload_bytes(clients: list[ClientData]) -> float:
    """What shipping the training images to one place costs a site (mean file bytes), once."""
    return float(np.mean([sum(s.path.stat().st_size for s in c.train) for c in clients]))


def run_local_patchcore(task: Task) -> Outcome:
    out = Outcome()
    for c in client_data(task.spec_path):
        det = PatchCoreDetector(detector_config(task)).fit(c.train)
        out.add(c.name, *det.evaluate_with_scores(c.test))
    return out


def run_central_patchcore(task: Task) -> Outcome:
    clients = client_data(task.spec_path)
    det = PatchCoreDetector(detector_config(task)).fit(_pooled(clients))
    out = Outcome(bytes_up=_upload_bytes(clients), rounds=1)
    for c in clients:
        out.add(c.name, *det.evaluate_with_scores(c.test))
    return out


def _cfa_client(task: Task, name: str, train: list[Any], test: list[Any]) -> Any:
    from feddymem.method.client import FedDyMemClient

    return FedDyMemClient(
        train=train,
        test=test,
        config=fed_config(task),
        state_dir=task.work / name,
        feature_cache=task.feature_cache,
    )


def _train_alone(client: Any, rounds: int) -> Any:
    """Rounds 0..R of one client with its own reduced memory in the role of M_g."""
    memory, _ = client.fit_round(round_idx=0, global_memory=None)
    for t in range(1, rounds + 1):
        memory, _ = client.fit_round(round_idx=t, global_memory=memory.vectors)
    return memory.vectors


def run_local_cfa(task: Task) -> Outcome:
    out = Outcome()
    for c in client_data(task.spec_path):
        client = _cfa_client(task, c.name, list(c.train), list(c.test))
        memory = _train_alone(client, task.rounds)
        out.add(c.name, *client.detector_with(memory).evaluate_with_scores(c.test))
    return out


def run_central_cfa(task: Task) -> Outcome:
    clients = client_data(task.spec_path)
    client = _cfa_client(task, "pooled", _pooled(clients), [])
    memory = _train_alone(client, task.rounds)
    det = client.detector_with(memory)
    out = Outcome(bytes_up=_upload_bytes(clients), rounds=1)
    for c in clients:
        out.add(c.name, *det.evaluate_with_scores(c.test))
    return out


def run_local_padim(task: Task) -> Outcome:
    from feddymem.detect.gaussian import GaussianConfig, GaussianDetector

    shared = {f.name for f in dataclasses.fields(FeatureConfig)}
    values = {k: v for k, v in task.model.items() if k in shared}
    out = Outcome()
    for c in client_data(task.spec_path):
        cfg = from_dict(GaussianConfig, {**values, "seed": task.seed}, where="bench model")
        det = GaussianDetector(cfg).fit(c.train)
        out.add(c.name, *det.evaluate_with_scores(c.test))
    return out


# --------------------------------------------------------------------------------------------
# federated: Flower simulations


def _derived_spec(task: Task, name: str, model: Mapping[str, Any]) -> Path:
    """A spec with the task's clients (absolute data paths), rounds, seed and model options."""
    import tomli_w

    spec = load_spec(task.spec_path)
    raw: dict[str, Any] = spec.to_dict()
    raw["federation"] = {
        **raw.get("federation", {}),
        "name": name,
        "rounds": task.rounds,
        "min_clients": 1,
        "seed": task.seed,
    }
    raw["model"] = {k: v for k, v in {**model, "seed": task.seed}.items() if v is not None}
    task.work.mkdir(parents=True, exist_ok=True)
    path = task.work / "spec.toml"
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


def _from_results(results: Mapping[str, Any]) -> Outcome:
    """Outcome of a federated run's results.json (per-client metrics, bytes per round)."""
    # Rounds that exchanged something: FedDyMem has a round 0 (first memories), FedAvg has not.
    out = Outcome(rounds=len(results.get("rounds", [])) or int(results["rounds_completed"]) + 1)
    for name, entry in results["clients"].items():
        if entry.get("image_auroc") is None:
            continue  # a client dropped on the way: it has no result
        out.clients[name] = {k: _float(entry.get(k)) for k in METRIC_KEYS}
        model_file = entry.get("model_file")
        if model_file:
            scores = Path(model_file).parent / "test_scores.npz"
            if scores.is_file():
                with np.load(scores) as z:
                    out.scores[name] = (z["labels"], z["image_scores"])
    per_round = results.get("bytes", {}).get("per_client_per_round", {})
    ups = [int(r["up"]) for rounds in per_round.values() for r in rounds.values()]
    downs = [int(r["down"]) for rounds in per_round.values() for r in rounds.values()]
    out.bytes_up = float(np.mean(ups)) if ups else 0.0
    out.bytes_down = float(np.mean(downs)) if downs else 0.0
    return out


def _feddymem(memory_scale: int = 1, **overrides: Any) -> Callable[[Task], Outcome]:
    """A FedDyMem row with `overrides` of the task's model; `memory_scale` multiplies the
    client and global memory sizes (a larger memory in the same bytes with float16)."""

    def run(task: Task) -> Outcome:
        from feddymem.federation.simulation import run_federation

        model = {**task.model, **overrides}
        if memory_scale != 1:
            size = int(model.get("client_memory_size", FedDyMemConfig.client_memory_size))
            model["client_memory_size"] = size * memory_scale
            if model.get("global_memory_size") is not None:
                model["global_memory_size"] = int(model["global_memory_size"]) * memory_scale
        spec = _derived_spec(task, f"{task.dataset}-feddymem", model)
        results = run_federation(spec, task.work, feature_cache=task.feature_cache)
        return _from_results(results)

    return run


def _fed_padim(**overrides: Any) -> Callable[[Task], Outcome]:
    """A fed-padim row with `overrides` of the task's model (`upload_noise`: the moment
    noise every site puts on its patch vectors before summing them)."""

    def run(task: Task) -> Outcome:
        from feddymem.federation.fedpadim import run_fed_padim as simulate_fed_padim

        spec = _derived_spec(task, f"{task.dataset}-fed-padim", {**task.model, **overrides})
        results = simulate_fed_padim(spec, task.work, feature_cache=task.feature_cache)
        return _from_results(results)

    return run


def _param_sharing(method: str) -> Callable[[Task], Outcome]:
    def run(task: Task) -> Outcome:
        from feddymem.federation.baselines.methods import run_param_sharing

        spec = _derived_spec(task, f"{task.dataset}-{method}", task.model)
        results = run_param_sharing(
            spec,
            task.work,
            method=method,  # type: ignore[arg-type]
            rounds=task.rounds,
            feature_cache=task.feature_cache,
        )
        return _from_results(results)

    return run


_ALL = [
    Method("local-patchcore", "local-only", False, run_local_patchcore, "PatchCore per client"),
    Method("local-cfa", "local-only", False, run_local_cfa, "FedDyMem client alone (CFA-like)"),
    Method("local-padim", "local-only", False, run_local_padim, "PaDiM-style Gaussian per client"),
    Method(
        "central-patchcore", "centralised", False, run_central_patchcore, "PatchCore, pooled data"
    ),
    Method("central-cfa", "centralised", False, run_central_cfa, "CFA-like model, pooled data"),
    Method("fedavg", "parameter sharing", True, _param_sharing("fedavg"), "FedAvg of G, local M"),
    Method(
        "fedprox", "parameter sharing", True, _param_sharing("fedprox"), "FedProx of G, local M"
    ),
    Method("fedae", "parameter sharing", True, _param_sharing("fedae"), "feature AE, FedAvg"),
    Method(
        "fed-padim",
        "statistics sharing",
        True,
        _fed_padim(),
        "PaDiM of the summed per-position moments (= pooled PaDiM)",
    ),
    Method(
        "fed-padim-noise2",
        "statistics sharing",
        True,
        _fed_padim(upload_noise=2.0),
        "fed-padim, patch vectors noised (norm 2x their spread) before the sums",
    ),
    Method(
        "fed-padim-noise4",
        "statistics sharing",
        True,
        _fed_padim(upload_noise=4.0),
        "fed-padim, patch vectors noised (norm 4x their spread) before the sums",
    ),
    Method("feddymem", "FedDyMem", True, _feddymem(), "FedDyMem, all parts on"),
    Method(
        "feddymem-no-generator",
        "ablation",
        True,
        _feddymem(generator=False),
        "no memory generator: z = p",
    ),
    Method(
        "feddymem-no-metric-loss",
        "ablation",
        True,
        _feddymem(metric_loss=False),
        "generator never trained",
    ),
    Method(
        "feddymem-no-dynamic-memory",
        "ablation",
        True,
        _feddymem(dynamic_memory=False),
        "M_k built once in round 0",
    ),
    Method(
        "feddymem-no-reduce",
        "ablation",
        True,
        _feddymem(memory_reduce="none"),
        "raw patch vectors (random sample of the same size) instead of memory-reduce",
    ),
    Method(
        "feddymem-kmeans-reduce",
        "ablation",
        True,
        _feddymem(memory_reduce="kmeans"),
        "memory-reduce by k-means centres instead of the coreset",
    ),
    Method(
        "feddymem-mean-server",
        "ablation",
        True,
        # Item-wise means need position-aligned banks of one shape: the paper's per-position
        # average on square inputs (every client's grid is then the same).
        _feddymem(server_aggregation="mean", memory_reduce="position_average", keep_aspect=False),
        "per-position average, server mean instead of k-means",
    ),
]
_LEVERS = [
    Method(
        "feddymem-own-memory",
        "lever",
        True,
        _feddymem(score_memory="global+own"),
        "scores against M_g and the site's own last M_k",
    ),
    Method(
        "feddymem-fp16",
        "lever",
        True,
        _feddymem(wire_dtype="float16"),
        "M_k and M_g travel as float16",
    ),
    Method(
        "feddymem-fp16-2x",
        "lever",
        True,
        _feddymem(memory_scale=2, wire_dtype="float16"),
        "twice the memory items as float16: the bytes of the float32 memory",
    ),
    Method(
        "feddymem-pq",
        "lever",
        True,
        _feddymem(wire_dtype="pq"),
        "M_k and M_g product-quantised by faiss (4 values a sub-vector, 6 bits a code)",
    ),
    Method(
        "feddymem-pq-2x",
        "lever",
        True,
        _feddymem(memory_scale=2, wire_dtype="pq"),
        "twice the memory items, product-quantised: within FedAvg's bytes",
    ),
    Method(
        "feddymem-sq8",
        "lever",
        True,
        _feddymem(wire_dtype="sq8"),
        "M_k and M_g scalar-quantised to 8 bits a value (faiss)",
    ),
    Method(
        "feddymem-sq4",
        "lever",
        True,
        _feddymem(wire_dtype="sq4"),
        "M_k and M_g scalar-quantised to 4 bits a value: every item, within FedAvg's bytes",
    ),
    Method(
        "feddymem-union",
        "lever",
        True,
        _feddymem(server_aggregation="union"),
        "M_g is every site's upload as it came (no k-means); sites cross-fit their threshold",
    ),
    Method(
        "feddymem-union-fp16-2x",
        "lever",
        True,
        _feddymem(memory_scale=2, wire_dtype="float16", server_aggregation="union"),
        "M_g keeps every upload, each twice the items as float16 (the float32 bytes up)",
    ),
    Method(
        "feddymem-union-pq",
        "lever",
        True,
        _feddymem(server_aggregation="union", wire_dtype="pq"),
        "M_g is every site's upload as it came (no k-means), product-quantised",
    ),
    Method(
        "feddymem-fp16-2x-own",
        "lever",
        True,
        _feddymem(memory_scale=2, wire_dtype="float16", score_memory="global+own"),
        "fp16-2x and scoring against M_g and the own M_k",
    ),
]
METHODS: dict[str, Method] = {m.name: m for m in (*_ALL, *_LEVERS)}
