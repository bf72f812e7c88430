"""The FedDyMem ServerApp: a custom round loop over Flower's Message API.

1. Wait (bounded by ``connect_timeout_s``) until the clients have connected, ask each node for
   its client name (``query``).
2. Rounds t = 0..R: send (t, config, M_g) to every client still in the federation, receive with
   ``round_timeout_s``; drop a client whose reply is an error, missing (it died or is too slow)
   or whose memory fails the spec's upload limits (`limits.upload_limits`: byte cap before
   decoding, then `limits.validate_memory`: d from the backbone, item norms, weights), with a
   logged reason naming node and client. Dropped clients stay out. Fewer than ``min_clients``
   left fails the run. Aggregate the accepted memories (sorted by client name, so arrival order
   never matters) into M_g (`merge.merge_uploads`: an upload that makes the merge fail is
   dropped and the round goes on), check M_g, write ``checkpoints/round_XXX.pt``.
3. Evaluate: send the final M_g, collect each client's metrics (it also exports its model file).
4. Write ``results.json`` (also when the run fails, with ``status = "failed"`` and the error;
   `server_base`) and ``global_memory.pt``.

Resume (``resume = true``): continue after the latest checkpoint. Clients keep their state per
run on disk and a client asked again for a round it already finished returns that round's
memory, so a resumed run reaches the same M_g and metrics as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from feddymem.federation import wire
from feddymem.federation.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    RunState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from feddymem.federation.limits import (
    UploadLimits,
    upload_limits,
    validate_global_memory,
    validate_memory,
)
from feddymem.federation.merge import merge_uploads
from feddymem.federation.participants import FederationError, Participants
from feddymem.federation.runconfig import ServerSettings, Value, server_settings
from feddymem.federation.server_base import Evaluation, build_app, record_run, results_document
from feddymem.federation.spec import FederationSpec, load_spec
from feddymem.method.aggregate import aggregate_memories
from feddymem.method.reduce import ReducedMemory
from feddymem.method.seeds import round_seed
from feddymem.outputs import atomic_open

__all__ = [
    "GLOBAL_MEMORY_FILE",
    "FederationError",
    "app",
    "build_server_app",
    "read_upload",
    "serve",
]

log = logging.getLogger(__name__)

GLOBAL_MEMORY_FILE = "global_memory.pt"
_OPERATIONAL_KEYS = frozenset({"round_timeout_s", "connect_timeout_s"})


def _binding(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint: all but the timeouts (a run
    stopped by a slow client may resume with a longer ``round_timeout_s``)."""
    federation = {
        k: v for k, v in settings.get("federation", {}).items() if k not in _OPERATIONAL_KEYS
    }
    return {**settings, "federation": federation}


def read_upload(content: RecordDict, *, name: str, limits: UploadLimits) -> ReducedMemory:
    """The memory in client `name`'s train reply, once it passed every check: the reply names
    that client, the memory's bytes are under the cap before decoding, and it meets the limits.
    Raises MemoryRejected / WireError (ValueError) with the reason."""
    reported = wire.identity_from_content(content).name
    if reported != name:
        raise wire.MemoryRejected(f"reply names client {reported!r}, expected {name!r}")
    memory = wire.memory_from_content(
        content, max_bytes=limits.max_bytes, dtype=limits.wire, dim=limits.dim
    )
    validate_memory(memory, limits)
    return memory


class _Run:
    """One server run: the spec, the output folder, the state and the bookkeeping."""

    def __init__(self, grid: Grid, settings: ServerSettings, spec: FederationSpec) -> None:
        self.grid = grid
        self.settings = settings
        self.spec = spec
        self.fed = spec.federation
        self.out = settings.out
        self.t_start = time.perf_counter()
        self.resumed_from: int | None = None
        self.evaluation = Evaluation()
        self.limits = upload_limits(spec.model, max_items=spec.federation.max_memory_items)
        self.state = self._initial_state()
        # the checkpoint's own lists: who is still in, who was dropped and why
        self.participants = Participants(
            grid, spec, active=self.state.active, rejected=self.state.rejected
        )

    # --- setup ------------------------------------------------------------------------------
    def _initial_state(self) -> RunState:
        resolved = {**self.spec.to_dict(), "upload_limits": self.limits.to_dict()}
        latest = latest_checkpoint(self.out)
        if not self.settings.resume:
            if latest is not None:
                raise FederationError(
                    f"{self.out / CHECKPOINT_DIR} holds checkpoints of an earlier run: resume it "
                    f"(--resume) or choose a new output folder"
                )
            return RunState(
                run_id=uuid.uuid4().hex[:12], settings=resolved, active=list(self.spec.client_names)
            )
        if latest is None:
            log.warning("resume: no checkpoint in %s, starting from round 0", self.out)
            return RunState(
                run_id=uuid.uuid4().hex[:12], settings=resolved, active=list(self.spec.client_names)
            )
        state = load_checkpoint(latest)
        before, now = _binding(state.settings), _binding(resolved)
        if before != now:
            differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise CheckpointError(
                f"{latest} was written with other settings (differing: {differ}); resume with the "
                f"same spec or start a new output folder"
            )
        state.settings = resolved  # timeouts may have changed; results show what ran last
        self.resumed_from = state.round_idx
        log.info("resuming run %s after round %d (%s)", state.run_id, state.round_idx, latest)
        return state

    def _instructions(self, round_idx: int) -> wire.Instructions:
        return wire.Instructions(
            round_idx=round_idx,
            num_rounds=self.fed.rounds,
            run_name=self.fed.name,
            run_id=self.state.run_id,
        )

    def _content(self, round_idx: int, *, with_memory: bool) -> RecordDict:
        content = RecordDict(
            {
                wire.INSTRUCTIONS: wire.instructions_to_record(self._instructions(round_idx)),
                wire.CONFIG: wire.config_to_record(self.spec.model),
            }
        )
        if with_memory and self.state.global_memory is not None:
            validate_global_memory(self.state.global_memory, self.limits)
            content[wire.GLOBAL_MEMORY] = wire.global_memory_to_record(
                self.state.global_memory,
                dtype=self.limits.wire,
                seed=round_seed(self.fed.seed, round_idx),
            )
        return content

    def train_round(self, roster: dict[int, str], round_idx: int) -> dict[int, str]:
        """Round t: send, receive, validate, aggregate, checkpoint; returns the surviving roster."""
        t0 = time.perf_counter()
        content = self._content(round_idx, with_memory=round_idx > 0)
        messages = {
            node: Message(
                content, dst_node_id=node, message_type="train", group_id=f"round-{round_idx}"
            )
            for node in roster
        }
        replies = self.participants.exchange(
            messages, timeout=self.fed.round_timeout_s, what=f"round {round_idx}", names=roster
        )
        accepted, rows, nodes_of = self._read_uploads(roster, round_idx, messages, replies)
        self.participants.require(len(accepted), when=f"round {round_idx}")
        global_memory = self._merge(accepted, nodes_of, round_idx)
        self.participants.require(len(accepted), when=f"round {round_idx}")
        self._finish_round(global_memory, accepted, rows, round_idx, started=t0)
        return {node: name for node, name in roster.items() if name in accepted}

    def _read_uploads(
        self,
        roster: dict[int, str],
        round_idx: int,
        messages: Mapping[int, Message],
        replies: Mapping[int, Message],
    ) -> tuple[dict[str, ReducedMemory], dict[str, dict[str, Any]], dict[str, int]]:
        """The memories that pass `read_upload` (the others rejected with why), each client's
        row of the round (bytes, size, metrics) and each client's node, by client name."""
        accepted: dict[str, ReducedMemory] = {}
        rows: dict[str, dict[str, Any]] = {}
        nodes_of: dict[str, int] = {}
        for node, name in sorted(roster.items(), key=lambda item: item[1]):
            row: dict[str, Any] = {"bytes_down": wire.message_size(messages[node]), "bytes_up": 0}
            rows[name] = row
            nodes_of[name] = node
            reply = self.participants.usable_reply(
                replies, phase="train", round_idx=round_idx, node=node, name=name
            )
            if reply is None:
                continue
            try:
                row["bytes_up"] = wire.message_size(reply)
                memory = read_upload(reply.content, name=name, limits=self.limits)
            except Exception as err:  # hostile input: refuse it with the reason, go on
                reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
                self.participants.reject(
                    phase="train", round_idx=round_idx, node=node, name=name, reason=reason
                )
                continue
            accepted[name] = memory
            row.update(
                n_images=memory.n_images,
                memory_items=int(memory.vectors.shape[0]),
                metrics=wire.metrics_from_content(reply.content),
            )
        return accepted, rows, nodes_of

    def _merge(
        self, accepted: dict[str, ReducedMemory], nodes_of: Mapping[str, int], round_idx: int
    ) -> torch.Tensor:
        """M_g of the `accepted` memories; an upload that makes the merge fail is removed from
        `accepted` and rejected."""
        cfg = self.spec.model
        global_memory, dropped = merge_uploads(
            accepted,
            lambda memories: aggregate_memories(
                memories,
                num_centers=cfg.global_memory_size,
                method=cfg.server_aggregation,
                seed=round_seed(self.fed.seed, round_idx),
                iterations=cfg.kmeans_iterations,
            ),
            self.limits,
        )
        for name, reason in sorted(dropped.items()):
            del accepted[name]
            self.participants.reject(
                phase="train", round_idx=round_idx, node=nodes_of[name], name=name, reason=reason
            )
        return global_memory

    def _finish_round(
        self,
        global_memory: torch.Tensor,
        accepted: Mapping[str, ReducedMemory],
        rows: dict[str, dict[str, Any]],
        round_idx: int,
        *,
        started: float,
    ) -> None:
        """Keep M_g and the clients that passed, log the round and write its checkpoint."""
        self.state.global_memory = global_memory
        self.state.round_idx = round_idx
        self.participants.keep(accepted)
        wall = time.perf_counter() - started
        self.state.rounds.append(
            {
                "round": round_idx,
                "wall_s": wall,
                "accepted": sorted(accepted),
                "global_memory_shape": list(self.state.global_memory.shape),
                "clients": rows,
            }
        )
        save_checkpoint(self.out, self.state)
        log.info(
            "round %d: %d client(s), M_g %s, %.1f s",
            round_idx,
            len(accepted),
            tuple(self.state.global_memory.shape),
            wall,
        )

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, roster: dict[int, str]) -> None:
        """Send the final M_g; collect metrics. A failing client is listed, not fatal."""
        t0 = time.perf_counter()
        content = self._content(self.state.round_idx, with_memory=True)
        messages = {
            node: Message(content, dst_node_id=node, message_type="evaluate", group_id="evaluate")
            for node in roster
        }
        replies = self.participants.exchange(
            messages, timeout=self.fed.round_timeout_s, what="evaluation", names=roster
        )
        self.evaluation.collect(
            self.participants, roster, messages, replies, started=t0, fill=("pixel_auroc", "aupro")
        )

    # --- results ------------------------------------------------------------------------------
    def results(self, *, status: str, error: str | None) -> dict[str, Any]:
        """The results.json document."""
        restored = sum(
            float(r["wall_s"])
            for r in self.state.rounds
            if self.resumed_from is not None and r["round"] <= self.resumed_from
        )
        memory_shape = (
            None if self.state.global_memory is None else list(self.state.global_memory.shape)
        )
        return results_document(
            status=status,
            error=error,
            federation=self.fed.name,
            method=None,
            run_id=self.state.run_id,
            rounds_completed=self.state.round_idx,
            resumed_from=self.resumed_from,
            participants=self.participants,
            rounds=self.state.rounds,
            evaluation=self.evaluation,
            started=self.t_start,
            restored_s=restored,
            model={"global_memory": {"file": GLOBAL_MEMORY_FILE, "shape": memory_shape}},
            settings=self.state.settings,
        )

    def save_global_memory(self) -> Path:
        """``<out>/global_memory.pt``: M_g, the round it comes from and the settings."""
        assert self.state.global_memory is not None
        path = self.out / GLOBAL_MEMORY_FILE
        with atomic_open(path, "wb") as fh:
            torch.save(
                {
                    "global_memory": self.state.global_memory,
                    "round": self.state.round_idx,
                    "run_id": self.state.run_id,
                    "settings_json": json.dumps(self.state.settings, sort_keys=True),
                },
                fh,
            )
        return path


def serve(grid: Grid, settings: ServerSettings) -> dict[str, Any]:
    """Run the whole federation on `grid`; returns (and writes) the results document.

    Raises FederationError / CheckpointError when the run fails; results.json then says so.
    """
    spec = load_spec(settings.spec)
    settings.out.mkdir(parents=True, exist_ok=True)
    run = _Run(grid, settings, spec)

    def work() -> None:
        roster = run.participants.connect()
        for round_idx in range(run.state.round_idx + 1, spec.federation.rounds + 1):
            roster = run.train_round(roster, round_idx)
        run.save_global_memory()
        run.evaluate(roster)

    what = f"federation {spec.federation.name}"
    results, path = record_run(settings.out, work, run.results, what=what, logger=log)
    auroc = results["mean"]["image_auroc"]
    log.info(
        "%s done: mean image AUROC %s -> %s",
        what,
        f"{auroc:.4f}" if isinstance(auroc, float) else auroc,
        path,
    )
    return results


def build_server_app(*, defaults: Mapping[str, Value] | None = None) -> ServerApp:
    """A ServerApp whose run-config values fall back to `defaults` (a simulation sets them)."""
    return build_app(serve, server_settings, defaults=defaults)


# The app `flwr run` loads (deploy/feddymem-app/pyproject.toml points here).
app = build_server_app()
