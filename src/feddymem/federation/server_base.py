"""What every ServerApp here shares: the app factory, the evaluation round's bookkeeping and
``results.json``.

FedDyMem's server (`feddymem.federation.server_app`), the parameter-sharing baselines'
(`feddymem.federation.baselines.server_app`) and fed-padim's
(`feddymem.federation.fedpadim.server_app`) each run their own rounds; they build their app,
collect the clients' metrics and write their results document with the pieces here, so the
document has one set of keys and a failed run still leaves a results.json that says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import flwr
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

import feddymem
from feddymem.allocator import keep_freed_memory
from feddymem.federation import wire
from feddymem.federation.applog import ensure_app_logging
from feddymem.federation.participants import FederationError, Participants, write_json
from feddymem.federation.runconfig import Value

__all__ = [
    "RESULTS_FILE",
    "Evaluation",
    "build_app",
    "failure",
    "record_run",
    "results_document",
    "versions",
    "write_results",
]

RESULTS_FILE = "results.json"

Settings = TypeVar("Settings")


def build_app(
    serve: Callable[[Grid, Settings], object],
    settings: Callable[..., Settings],
    *,
    defaults: Mapping[str, Value] | None = None,
) -> ServerApp:
    """A ServerApp that runs ``serve(grid, settings(run_config, defaults=defaults))``: run-config
    values fall back to `defaults` (a simulation sets them)."""
    fallback: dict[str, Value] = dict(defaults or {})
    keep_freed_memory()  # the process that runs the app reuses freed memory
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        ensure_app_logging()
        serve(grid, settings(context.run_config, defaults=fallback))

    return app


def failure(err: BaseException) -> str:
    """How results.json names the error a run failed with."""
    return f"{type(err).__name__}: {err}"


def write_results(out: Path, document: Mapping[str, Any]) -> Path:
    """``<out>/results.json``, written atomically."""
    return write_json(out / RESULTS_FILE, document)


def record_run(
    out: Path,
    work: Callable[[], object],
    results: Callable[..., dict[str, Any]],
    *,
    what: str,
    logger: logging.Logger,
) -> tuple[dict[str, Any], Path]:
    """Run `work`, then write ``results(status=..., error=...)`` to results.json: ``completed``,
    or ``failed`` with the error (logged as "`what` failed") before it is raised again.

    Returns:
        The completed run's results document and the path it was written to.
    """
    try:
        work()
    except Exception as err:  # any failure still leaves a results.json that says so
        logger.error("%s failed: %s", what, err)
        write_results(out, results(status="failed", error=failure(err)))
        raise
    document = results(status="completed", error=None)
    return document, write_results(out, document)


def versions() -> dict[str, str]:
    """The package versions results.json records."""
    return {"feddymem": feddymem.__version__, "flwr": flwr.__version__}


@dataclass
class Evaluation:
    """The evaluation round: each client's metrics, the bytes each way, the wall time."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    wall_s: float = 0.0

    def collect(
        self,
        participants: Participants,
        roster: Mapping[int, str],
        messages: Mapping[int, Message],
        replies: Mapping[int, Message],
        *,
        started: float,
        fill: tuple[str, ...],
        whole: tuple[str, ...] = (),
    ) -> None:
        """Read the replies to the evaluate `messages`, in client-name order: a client whose
        reply is unusable is listed, not fatal. Missing metrics named in `fill` are None,
        those in `whole` become integers. The wall time counts from `started`.

        Raises:
            FederationError: no client returned metrics.
        """
        for node, name in sorted(roster.items(), key=lambda item: item[1]):
            if node not in messages:
                continue
            sizes = {"down": wire.message_size(messages[node]), "up": 0}
            self.bytes[name] = sizes
            reply = participants.usable_reply(
                replies, phase="evaluate", round_idx=None, node=node, name=name
            )
            if reply is None:
                continue
            sizes["up"] = wire.message_size(reply)
            try:
                identity = wire.identity_from_content(reply.content)
                metrics: dict[str, Any] = dict(wire.metrics_from_content(reply.content))
            except wire.WireError as err:
                participants.reject(
                    phase="evaluate", round_idx=None, node=node, name=name, reason=str(err)
                )
                continue
            for key in fill:
                metrics.setdefault(key, None)
            for key in whole:
                if key in metrics:
                    metrics[key] = int(metrics[key])
            metrics["model_file"] = identity.model_file
            self.metrics[name] = metrics
        self.wall_s = time.perf_counter() - started
        if not self.metrics:
            raise FederationError("evaluation: no client returned metrics")


def results_document(
    *,
    status: str,
    error: str | None,
    federation: str,
    method: str | None,
    run_id: str,
    rounds_completed: int,
    resumed_from: int | None,
    participants: Participants,
    rounds: list[dict[str, Any]],
    evaluation: Evaluation,
    started: float,
    restored_s: float = 0.0,
    model: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The results.json document of a run with rounds and an evaluation: `method` (when given)
    follows ``federation``, `model` (one key: what the run's model file is) follows
    ``rounds``. The total wall time is `restored_s` (a resumed run's earlier rounds) plus the
    time since `started`."""
    clients, mean, per_round = participants.summary(
        rounds, evaluation=evaluation.metrics, eval_bytes=evaluation.bytes
    )
    head: dict[str, Any] = {"status": status, "error": error, "federation": federation}
    if method is not None:
        head["method"] = method
    return {
        **head,
        "run_id": run_id,
        "rounds_completed": rounds_completed,
        "resumed_from_round": resumed_from,
        "clients": clients,
        "mean": mean,
        "evaluated_clients": sorted(evaluation.metrics),
        "rejected": participants.rejected,
        "bytes": {
            "per_client_per_round": per_round,
            "identify": participants.identify_bytes,
            "evaluate": evaluation.bytes,
            "total_up": sum(c["bytes_up"] for c in clients.values()),
            "total_down": sum(c["bytes_down"] for c in clients.values()),
        },
        "wall_s": {
            "per_round": [float(r["wall_s"]) for r in rounds],
            "evaluation": evaluation.wall_s,
            "total": restored_s + (time.perf_counter() - started),
        },
        "rounds": rounds,
        **model,
        "settings": settings,
        "versions": versions(),
    }
