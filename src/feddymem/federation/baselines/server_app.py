"""The ServerApp of the parameter-sharing baselines: Flower's FedAvg / FedProx strategies.

The round loop is ours (to measure bytes per client, drop bad clients and write results.json
as the FedDyMem server does); the strategy configures each round's messages
(`configure_train` / `configure_evaluate`: the global arrays, ``server-round``, FedProx's
``proximal-mu``) and averages the accepted replies weighted by ``num-examples``
(`aggregate_train`). Nothing here re-implements the average.

1. Wait (``connect_timeout_s``) for the clients, ask each node its name (``query``).
2. FedAE only, round 0 (phase ``stats``): each client replies the per-channel mean and mean
   square of its patch features, weighted by its number of patch vectors; FedAvg's weighted
   average of the two is exactly the pooled mean and mean square, so mean and variance of all
   clients' features are known without any feature leaving a site. They become the
   autoencoder's standardisation buffers (std floored as `FeatureAutoencoder.set_normalization`
   does), identical for every client and re-installed after every average.
3. Rounds t = 1..R: the strategy sends the global weights; a client whose reply is an error,
   missing, misnamed or carries arrays that are not the model's (keys, shapes, dtype) or not
   finite (NaN / Inf) is dropped with a logged reason and stays out; fewer than
   ``min_clients`` left fails the run. The accepted replies, sorted by client name (so arrival
   order never changes the float sums), go to `aggregate_train`.
4. Evaluate: the final global weights go to every client left; each evaluates on its own test
   set (FedAvg / FedProx: with M_k rebuilt from the final G) and replies metrics only.
5. ``results.json`` (same keys as the FedDyMem server's; also written when the run fails) and
   ``global_model.pt`` (the final global state).

No checkpoints: a failed run starts again (the clients are stateless apart from cached
features).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from feddymem.config import to_dict
from feddymem.detect.autoencoder import FeatureAutoencoder
from feddymem.federation import wire
from feddymem.federation.baselines import wire as param_wire
from feddymem.federation.baselines.settings import (
    ParamSettings,
    autoencoder_config,
    feature_channels,
    make_strategy,
    param_settings,
)
from feddymem.federation.baselines.wire import Method, Phase
from feddymem.federation.participants import EVAL_METRICS, FederationError, Participants
from feddymem.federation.runconfig import Value
from feddymem.federation.server_base import Evaluation, build_app, record_run, results_document
from feddymem.federation.spec import FederationSpec, load_spec
from feddymem.method.generator import MemoryGenerator
from feddymem.outputs import atomic_open

__all__ = ["GLOBAL_MODEL_FILE", "build_param_server_app", "serve_param_sharing"]

log = logging.getLogger(__name__)

GLOBAL_MODEL_FILE = "global_model.pt"
# The autoencoder's standardisation buffers (`FeatureAutoencoder`): set by the server once.
_NORM_KEYS = ("feature_mean", "feature_std", "norm_count")


class _RosterGrid(Grid):
    """The run's Grid, showing the strategy only the nodes still in the federation (Flower's
    strategies sample from `get_node_ids()`; a dropped client must stay out)."""

    def __init__(self, inner: Grid, nodes: Iterable[int]) -> None:
        self.inner = inner
        self.nodes = sorted(nodes)

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


class _ParamRun:
    """One run of a parameter-sharing baseline: spec, strategy, roster and bookkeeping."""

    def __init__(self, grid: Grid, settings: ParamSettings, spec: FederationSpec) -> None:
        self.grid = grid
        self.settings = settings
        self.spec = spec
        self.fed = spec.federation
        self.method: Method = settings.method
        self.rounds = self.fed.rounds if settings.rounds is None else settings.rounds
        epochs = spec.model.local_epochs if settings.local_epochs is None else settings.local_epochs
        self.model = dataclasses.replace(spec.model, local_epochs=epochs)
        self.mu = settings.proximal_mu if self.method == "fedprox" else 0.0
        self.autoencoder = autoencoder_config(self.model) if self.method == "fedae" else None
        self.dim = feature_channels(self.model)
        self.strategy = make_strategy(
            self.method, proximal_mu=self.mu, min_clients=self.fed.min_clients
        )
        self.run_id = uuid.uuid4().hex[:12]
        self.t_start = time.perf_counter()
        self.roster: dict[int, str] = {}
        self.participants = Participants(grid, spec)
        self.rounds_log: list[dict[str, Any]] = []
        self.rounds_done = -1
        self.evaluation = Evaluation()
        self.arrays: ArrayRecord | None = None
        self.normalisation: dict[str, torch.Tensor] | None = None

    # --- bookkeeping --------------------------------------------------------------------------
    def _orders(self, phase: Phase, round_idx: int) -> ConfigRecord:
        return param_wire.orders_to_record(
            param_wire.Orders(
                method=self.method,
                phase=phase,
                round_idx=round_idx,
                num_rounds=self.rounds,
                run_name=self.fed.name,
                run_id=self.run_id,
                proximal_mu=self.mu,
                config=self.model,
                autoencoder=None if self.autoencoder is None else to_dict(self.autoencoder),
            )
        )

    # --- connecting ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Wait for the nodes, ask their names; keep the spec's clients, each once."""
        self.roster = self.participants.connect()

    # --- rounds -------------------------------------------------------------------------------
    def _expected(self, phase: Phase) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """Keys, shapes and dtypes a reply's arrays must have."""
        if phase == "stats":
            return {key: ((self.dim,), np.dtype(np.float64)) for key in param_wire.STATS_KEYS}
        assert self.arrays is not None
        return {
            key: (tuple(array.shape), np.dtype(array.dtype))
            for key, array in ((k, self.arrays[k].numpy()) for k in self.arrays)
        }

    def round(self, phase: Phase, round_idx: int) -> ArrayRecord:
        """One round: configure (strategy), send, check every reply, aggregate (strategy)."""
        t0 = time.perf_counter()
        arrays = ArrayRecord() if phase == "stats" else self.arrays
        assert arrays is not None
        grid = _RosterGrid(self.grid, self.roster)
        messages = {
            message.metadata.dst_node_id: message
            for message in self.strategy.configure_train(
                round_idx, arrays, self._orders(phase, round_idx), grid
            )
        }
        for message in messages.values():
            message.metadata.group_id = f"round-{round_idx}"
        replies = self.participants.exchange(messages, timeout=self.fed.round_timeout_s)
        expected = self._expected(phase)
        accepted: dict[str, Message] = {}
        rows: dict[str, dict[str, Any]] = {}
        for node, name in sorted(self.roster.items(), key=lambda item: item[1]):
            if node not in messages:
                continue
            row: dict[str, Any] = {"bytes_down": wire.message_size(messages[node]), "bytes_up": 0}
            rows[name] = row
            reply = self.participants.usable_reply(
                replies, phase=phase, round_idx=round_idx, node=node, name=name
            )
            if reply is None:
                continue
            row["bytes_up"] = wire.message_size(reply)
            try:
                self._check_reply(reply, name=name, expected=expected)
            except (param_wire.UpdateRejected, wire.WireError) as err:
                self.participants.reject(
                    phase=phase, round_idx=round_idx, node=node, name=name, reason=str(err)
                )
                continue
            accepted[name] = reply
            metrics = wire.metrics_from_content(reply.content)
            row.update(n_examples=metrics.get(param_wire.NUM_EXAMPLES), metrics=metrics)
        self.roster = {node: name for node, name in self.roster.items() if name in accepted}
        self.participants.keep(accepted)
        self.participants.require(len(accepted), when=f"round {round_idx}")
        try:
            aggregated, train_metrics = self.strategy.aggregate_train(
                round_idx, [accepted[name] for name in sorted(accepted)]
            )
        except Exception as err:  # Flower's InconsistentMessageReplies and the like
            raise FederationError(f"round {round_idx}: aggregation failed: {err}") from err
        if aggregated is None:
            raise FederationError(f"round {round_idx}: the strategy aggregated nothing")
        wall = time.perf_counter() - t0
        self.rounds_log.append(
            {
                "round": round_idx,
                "phase": phase,
                "wall_s": wall,
                "accepted": sorted(accepted),
                "train_metrics": dict(train_metrics or {}),
                "clients": rows,
            }
        )
        self.rounds_done = round_idx
        log.info(
            "%s round %d (%s): %d client(s), %.1f s",
            self.method,
            round_idx,
            phase,
            len(accepted),
            wall,
        )
        return aggregated

    def _check_reply(
        self,
        reply: Message,
        *,
        name: str,
        expected: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
    ) -> None:
        """Raise UpdateRejected unless the (error-free) reply is this client's well-formed update."""
        reported = wire.identity_from_content(reply.content).name
        if reported != name:
            raise param_wire.UpdateRejected(f"reply names client {reported!r}, expected {name!r}")
        content = reply.content
        if list(content.array_records) != [param_wire.ARRAYS]:
            raise param_wire.UpdateRejected(
                f"a reply must hold one ArrayRecord '{param_wire.ARRAYS}', got "
                f"{sorted(content.array_records)}"
            )
        param_wire.check_update(content.array_records[param_wire.ARRAYS], expected)
        metrics = wire.metrics_from_content(content)
        count = metrics.get(param_wire.NUM_EXAMPLES)
        if count is None or not math.isfinite(count) or count <= 0:
            raise param_wire.UpdateRejected(
                f"'{param_wire.NUM_EXAMPLES}' must be a finite number > 0, got {count!r}"
            )

    def initial_arrays(self) -> ArrayRecord:
        """The global model before round 1: G as every client builds it, or (FedAE) the
        autoencoder with the pooled standardisation of round 0."""
        cfg = self.model
        if self.method != "fedae":
            generator = MemoryGenerator(
                in_channels=self.dim, gamma_d=cfg.gamma_d, init=cfg.generator_init, seed=cfg.seed
            )
            return param_wire.state_to_record(generator.state_dict())
        stats = self.round("stats", 0)
        mean, var = param_wire.stats_from_record(stats)
        total = sum(
            float(row.get("n_examples") or 0.0) for row in self.rounds_log[-1]["clients"].values()
        )
        assert self.autoencoder is not None
        model = FeatureAutoencoder(
            self.dim,
            hidden=self.autoencoder.hidden,
            latent=self.autoencoder.latent,
            seed=self.autoencoder.seed,
        )
        std = var.sqrt()
        # the floor `FeatureAutoencoder.set_normalization` applies to a client's own statistics
        std = std.clamp_min(max(1e-2 * float(std.mean()), 1e-8))
        with torch.no_grad():
            model.feature_mean.copy_(mean.float().view(1, -1, 1, 1))
            model.feature_std.copy_(std.float().view(1, -1, 1, 1))
            model.norm_count.fill_(total)
        state = model.state_dict()
        self.normalisation = {key: state[key].detach().clone() for key in _NORM_KEYS}
        return param_wire.state_to_record(state)

    def _keep_normalisation(self, arrays: ArrayRecord) -> ArrayRecord:
        """FedAE: re-install the pooled standardisation after an average (all clients sent the
        same buffers; this keeps them exact instead of re-rounded every round)."""
        if self.normalisation is None:
            return arrays
        state = param_wire.state_from_record(arrays)
        state.update(self.normalisation)
        return param_wire.state_to_record(state)

    def train(self) -> None:
        """Rounds 1..R (after FedAE's statistics round 0)."""
        self.arrays = self.initial_arrays()
        for round_idx in range(1, self.rounds + 1):
            self.arrays = self._keep_normalisation(self.round("train", round_idx))

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Send the final global model; collect metrics. A failing client is listed, not fatal."""
        assert self.arrays is not None
        t0 = time.perf_counter()
        grid = _RosterGrid(self.grid, self.roster)
        round_idx = max(self.rounds, 0)
        messages = {
            message.metadata.dst_node_id: message
            for message in self.strategy.configure_evaluate(
                round_idx, self.arrays, self._orders("evaluate", round_idx), grid
            )
        }
        for message in messages.values():
            message.metadata.group_id = "evaluate"
        replies = self.participants.exchange(messages, timeout=self.fed.round_timeout_s)
        self.evaluation.collect(
            self.participants,
            self.roster,
            messages,
            replies,
            started=t0,
            fill=EVAL_METRICS,
            whole=("n_test",),
        )

    # --- results ------------------------------------------------------------------------------
    def settings_dict(self) -> dict[str, Any]:
        """The resolved settings: the spec (with the effective rounds / local epochs) and the
        method's own."""
        resolved = self.spec.to_dict()
        resolved["federation"]["rounds"] = self.rounds
        resolved["model"] = to_dict(self.model)
        resolved["method"] = {
            "name": self.method,
            "strategy": type(self.strategy).__name__,
            "proximal_mu": self.mu,
            "local_epochs": self.model.local_epochs,
            "autoencoder": None if self.autoencoder is None else to_dict(self.autoencoder),
            "shared": "autoencoder weights" if self.method == "fedae" else "generator weights",
        }
        return resolved

    def results(self, *, status: str, error: str | None) -> dict[str, Any]:
        """The results.json document (the FedDyMem server's keys, plus ``method``, ``model``)."""
        model_info: dict[str, Any] = {"file": GLOBAL_MODEL_FILE, "parameters": None, "bytes": None}
        if self.arrays is not None:
            arrays = [self.arrays[k].numpy() for k in self.arrays]
            model_info.update(
                parameters=int(sum(a.size for a in arrays)),
                bytes=int(sum(a.nbytes for a in arrays)),
                keys=sorted(self.arrays.keys()),
            )
        return results_document(
            status=status,
            error=error,
            federation=self.fed.name,
            method=self.method,
            run_id=self.run_id,
            rounds_completed=self.rounds_done,
            resumed_from=None,
            participants=self.participants,
            rounds=self.rounds_log,
            evaluation=self.evaluation,
            started=self.t_start,
            model={"model": model_info},
            settings=self.settings_dict(),
        )

    def save_model(self) -> Path:
        """``<out>/global_model.pt``: the final global state, its method and settings."""
        assert self.arrays is not None
        path = self.settings.out / GLOBAL_MODEL_FILE
        with atomic_open(path, "wb") as fh:
            torch.save(
                {
                    "method": self.method,
                    "state": param_wire.state_from_record(self.arrays),
                    "round": self.rounds_done,
                    "run_id": self.run_id,
                    "settings_json": json.dumps(self.settings_dict(), sort_keys=True),
                },
                fh,
            )
        return path


def serve_param_sharing(grid: Grid, settings: ParamSettings) -> dict[str, Any]:
    """Run one parameter-sharing baseline on `grid`; returns (and writes) results.json.

    Raises FederationError when the run fails; results.json then says so.
    """
    spec = load_spec(settings.spec)
    settings.out.mkdir(parents=True, exist_ok=True)
    run = _ParamRun(grid, settings, spec)

    def work() -> None:
        run.connect()
        run.train()
        run.save_model()
        run.evaluate()

    what = f"{settings.method} on {spec.federation.name}"
    results, path = record_run(settings.out, work, run.results, what=what, logger=log)
    log.info("%s done: mean image AUROC %s -> %s", what, results["mean"]["image_auroc"], path)
    return results


def build_param_server_app(*, defaults: Mapping[str, Value] | None = None) -> ServerApp:
    """The parameter-sharing ServerApp; run-config values fall back to `defaults`."""
    return build_app(serve_param_sharing, param_settings, defaults=defaults)


# The app `flwr run` could load for a deployment of the baselines.
app = build_param_server_app()
