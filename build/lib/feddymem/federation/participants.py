"""Who takes part in a server run, and why the others were dropped.

Both ServerApps (FedDyMem's memory exchange in `server_app`, the parameter-sharing baselines in
`param_server`) connect the same way: wait for the nodes, ask each its client name, keep the
spec's clients once each, and drop any other node or any client that fails a round with the
reason logged and kept for results.json. :class:`Participants` does that for both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from feddymem.federation import wire
from feddymem.federation.spec import FederationSpec
from feddymem.outputs import atomic_open

__all__ = ["EVAL_METRICS", "FederationError", "Participants", "node_label", "write_json"]

log = logging.getLogger(__name__)

_POLL_S = 0.5
# the evaluation metrics every client reports (None where it has no masks) and results.json means
EVAL_METRICS = ("image_auroc", "f1_max", "pixel_auroc", "aupro")


class FederationError(RuntimeError):
    """The federation cannot go on (too few clients, aggregation failed, bad output folder)."""


def node_label(node: int | None, name: str | None) -> str:
    """How a log line names a client: by name and node id where both are known."""
    if node is None:
        return f"client {name}"
    return f"client {name} (node {node})" if name else f"node {node}"


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write `document` to `path` as indented JSON, atomically (a temporary file, then rename)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(document, indent=2) + "\n")
    return path


class Participants:
    """The clients of one server run: which are still in it and which were dropped, with why.

    Args:
        grid: Flower's grid of the run.
        spec: the federation spec (its clients and timeouts).
        active: names of the clients still in the run; kept and updated in place, so a caller
            can hand in the list its checkpoint saves. None: every client of the spec.
        rejected: the drop records so far (``phase``, ``round``, ``client``, ``node_id``,
            ``reason``); appended to in place. None: a new list.
    """

    def __init__(
        self,
        grid: Grid,
        spec: FederationSpec,
        *,
        active: list[str] | None = None,
        rejected: list[dict[str, Any]] | None = None,
    ) -> None:
        self.grid = grid
        self.spec = spec
        self.fed = spec.federation
        self.active: list[str] = list(spec.client_names) if active is None else active
        self.rejected: list[dict[str, Any]] = [] if rejected is None else rejected
        # bytes of each client's identify query and reply, by client name
        self.identify_bytes: dict[str, dict[str, int]] = {}

    def reject(
        self, *, phase: str, round_idx: int | None, node: int | None, name: str | None, reason: str
    ) -> None:
        """Drop a node or client from the run: log why and keep the record for results.json."""
        where = phase if round_idx is None else f"round {round_idx}"
        log.warning("%s: dropping %s: %s", where, node_label(node, name), reason)
        self.rejected.append(
            {"phase": phase, "round": round_idx, "client": name, "node_id": node, "reason": reason}
        )

    def require(self, count: int, *, when: str) -> None:
        """Raise FederationError when fewer than min_clients clients are left."""
        if count < self.fed.min_clients:
            reasons = "; ".join(
                f"{r['client'] or 'node ' + str(r['node_id'])}: {r['reason']}"
                for r in self.rejected
            )
            raise FederationError(
                f"{when}: {count} client(s) left, min_clients is {self.fed.min_clients}"
                + (f" (dropped: {reasons})" if reasons else "")
            )

    def keep(self, names: Iterable[str]) -> None:
        """The clients that passed a round: they alone stay active."""
        self.active[:] = sorted(names)

    def exchange(self, messages: Mapping[int, Message], *, timeout: float) -> dict[int, Message]:
        """Send every message, wait up to `timeout` s: the replies by sending node id."""
        if not messages:
            return {}
        replies = self.grid.send_and_receive(list(messages.values()), timeout=timeout)
        return {reply.metadata.src_node_id: reply for reply in replies}

    def usable_reply(
        self,
        replies: Mapping[int, Message],
        *,
        phase: str,
        round_idx: int | None,
        node: int,
        name: str,
    ) -> Message | None:
        """The node's reply, or None (and the client dropped, with why) if it has none or erred."""
        reply = replies.get(node)
        if reply is None:
            reason = (
                f"no reply within round_timeout_s = {self.fed.round_timeout_s:g} s "
                "(client died or too slow)"
            )
        elif reply.has_error():
            reason = f"client error: {reply.error.reason}"
        else:
            return reply
        self.reject(phase=phase, round_idx=round_idx, node=node, name=name, reason=reason)
        return None

    def connect(self) -> dict[int, str]:
        """Wait for the nodes, ask their names: node id -> client name of the active clients
        that connected, each once; FederationError when fewer than min_clients are left."""
        return self.identify(self.wait_for_nodes())

    def wait_for_nodes(self) -> list[int]:
        """Node ids once enough clients connected (all active ones, or min_clients at timeout)."""
        want = len(self.active)
        deadline = time.monotonic() + self.fed.connect_timeout_s
        nodes = sorted(self.grid.get_node_ids())
        while len(nodes) < want and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            nodes = sorted(self.grid.get_node_ids())
        if len(nodes) < self.fed.min_clients:
            raise FederationError(
                f"only {len(nodes)} node(s) connected within connect_timeout_s = "
                f"{self.fed.connect_timeout_s:g} s; min_clients is {self.fed.min_clients}"
            )
        if len(nodes) < want:
            log.warning("%d of %d clients connected; going on with them", len(nodes), want)
        return nodes

    def identify(self, nodes: Iterable[int]) -> dict[int, str]:
        """Ask every node its client name; keep the active, distinct ones: node id -> name."""
        messages = {
            node: Message(RecordDict(), dst_node_id=node, message_type="query", group_id="identify")
            for node in nodes
        }
        replies = self.exchange(messages, timeout=self.fed.connect_timeout_s)
        roster: dict[int, str] = {}
        known = set(self.spec.client_names)
        for node in sorted(messages):
            reply = replies.get(node)
            name: str | None = None
            if reply is None:
                reason: str | None = "no reply to the identify query"
            elif reply.has_error():
                reason = f"client error: {reply.error.reason}"
            else:
                try:
                    name = wire.identity_from_content(reply.content).name
                    reason = None
                except wire.WireError as err:
                    reason = str(err)
            if reply is not None and name is not None:
                self.identify_bytes[name] = {
                    "down": wire.message_size(messages[node]),
                    "up": wire.message_size(reply),
                }
                taken = [other for other, held in roster.items() if held == name]
                if name not in known:
                    reason = f"not a client of {self.spec.path.name} ({sorted(known)})"
                elif taken:
                    reason = f"name already taken by node {taken[0]}"
                elif name not in self.active:
                    log.info(
                        "%s was dropped earlier in this run; it stays out", node_label(node, name)
                    )
                    continue
            if reason is not None:
                self.reject(phase="identify", round_idx=None, node=node, name=name, reason=reason)
                continue
            assert name is not None
            roster[node] = name
        present = set(roster.values())
        for name in self.active:
            if name not in present:
                self.reject(
                    phase="identify", round_idx=None, node=None, name=name, reason="did not connect"
                )
        self.keep(present)
        self.require(len(roster), when="after connecting")
        return roster

    def summary(
        self,
        rounds: Iterable[Mapping[str, Any]],
        *,
        evaluation: Mapping[str, Mapping[str, Any]],
        eval_bytes: Mapping[str, Mapping[str, int]],
    ) -> tuple[dict[str, Any], dict[str, float | None], dict[str, dict[str, dict[str, int]]]]:
        """results.json's ``clients``, ``mean`` and per-round bytes.

        ``clients``: per client of the spec, the bytes it sent and received over the rounds (each
        round record's ``clients`` rows), the identify query and the evaluation, its evaluation
        metrics and whether it is still active. ``mean``: each of EVAL_METRICS averaged over the
        clients that reported a finite value (None if none did). Per-round bytes: client ->
        round -> ``{"up", "down"}``.
        """
        names = sorted(set(self.spec.client_names))
        per_round: dict[str, dict[str, dict[str, int]]] = {n: {} for n in names}
        for record in rounds:
            for name, row in record["clients"].items():
                per_round.setdefault(name, {})[str(record["round"])] = {
                    "up": int(row["bytes_up"]),
                    "down": int(row["bytes_down"]),
                }
        clients: dict[str, Any] = {}
        for name in names:
            up = sum(v["up"] for v in per_round.get(name, {}).values())
            down = sum(v["down"] for v in per_round.get(name, {}).values())
            for extra in (self.identify_bytes.get(name), eval_bytes.get(name)):
                if extra:
                    up += extra["up"]
                    down += extra["down"]
            entry: dict[str, Any] = {"bytes_up": up, "bytes_down": down}
            entry.update(evaluation.get(name, {}))
            entry["active"] = name in self.active
            clients[name] = entry
        mean: dict[str, float | None] = {}
        for key in EVAL_METRICS:
            values = [
                float(m[key])
                for m in evaluation.values()
                if isinstance(m.get(key), (int, float)) and math.isfinite(float(m[key]))
            ]
            mean[key] = sum(values) / len(values) if values else None
        return clients, mean, per_round
