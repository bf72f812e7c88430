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
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from feddymem.federation import wire
from feddymem.federation.spec import FederationSpec
from feddymem.outputs import atomic_open

__all__ = [
    "DROP_KINDS",
    "EVAL_METRICS",
    "FederationError",
    "Participants",
    "error_kind",
    "node_label",
    "write_json",
]

log = logging.getLogger(__name__)

_POLL_S = 0.5
# What a drop record's ``kind`` says happened, by the error code of the reply (Flower 1.41):
# the SuperLink answers for a node that stopped sending heartbeats (its reply comes from the
# SuperLink's node id, not the client's); a SuperNode that cannot or will not load the app
# (an unsigned or foreign app under --trusted-entities, a broken FAB) refuses it.
_KIND_OF_CODE = {
    ErrorCode.NODE_UNAVAILABLE: "unavailable",
    ErrorCode.MESSAGE_UNAVAILABLE: "unavailable",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "timeout",
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: "refused",
    ErrorCode.INVALID_FAB: "refused",
    ErrorCode.MOD_FAILED_PRECONDITION: "refused",
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION: "client_error",
    ErrorCode.CLIENT_APP_CRASHED: "client_error",
}
DROP_KINDS = ("unavailable", "timeout", "refused", "client_error", "invalid", "identity")
# the evaluation metrics every client reports (None where it has no masks) and results.json means
EVAL_METRICS = (
    "image_auroc",
    "f1_max",
    "pixel_auroc",
    "aupro",
    # at each site's own threshold (its held-out normals, the detector's rule)
    "recall_at_threshold",
    "false_alarm_rate_at_threshold",
)


class FederationError(RuntimeError):
    """The federation cannot go on (too few clients, aggregation failed, bad output folder)."""


def node_label(node: int | None, name: str | None) -> str:
    """How a log line names a client: by name and node id where both are known."""
    if node is None:
        return f"client {name}"
    return f"client {name} (node {node})" if name else f"node {node}"


def error_kind(code: int) -> str:
    """The drop kind of an error reply's code (`_KIND_OF_CODE`; other codes: client_error)."""
    return _KIND_OF_CODE.get(int(code), "client_error")


def _error_reason(reply: Message) -> tuple[str, str]:
    """(kind, reason) of an error reply, the reason saying what happened in words."""
    kind = error_kind(reply.error.code)
    lead = {
        "unavailable": "node unavailable (the SuperLink lost its heartbeat: stopped or cut off)",
        "timeout": "reply expired before it was collected",
        "refused": "the node refused the app",
        "client_error": "client error",
    }[kind]
    return kind, f"{lead}: {reply.error.reason}"


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write `document` to `path` as indented JSON, atomically (a temporary file, then rename)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(document, indent=2) + "\n")
    return path


# How often a long exchange logs the clients still at work, and polls for replies.
PROGRESS_EVERY_S = 30.0
PULL_INTERVAL_S = 0.1


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
        self,
        *,
        phase: str,
        round_idx: int | None,
        node: int | None,
        name: str | None,
        reason: str,
        kind: str = "invalid",
    ) -> None:
        """Drop a node or client from the run: log why and keep the record for results.json.

        `kind` (one of DROP_KINDS) says what happened: unavailable (the node is gone), timeout
        (no reply in time), refused (the node would not run the app), client_error (the app
        raised), invalid (the reply broke the wire format or the upload limits), identity (an
        unknown, duplicate or missing client name)."""
        where = phase if round_idx is None else f"round {round_idx}"
        log.warning("%s: dropping %s: %s: %s", where, node_label(node, name), kind, reason)
        self.rejected.append(
            {
                "phase": phase,
                "round": round_idx,
                "client": name,
                "node_id": node,
                "kind": kind,
                "reason": reason,
            }
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

    def exchange(
        self,
        messages: Mapping[int, Message],
        *,
        timeout: float,
        what: str | None = None,
        names: Mapping[int, str] | None = None,
    ) -> dict[int, Message]:
        """Send every message, wait up to `timeout` s: the replies by the node each answers for.

        A reply is matched to the message it answers (``reply_to_message_id``; the grid sets
        each sent message's id), so the SuperLink's own error reply for a node it lost (sent
        from the SuperLink's node id) counts for that node; the sender's node id is the
        fallback for a grid that does not set message ids.

        With `what` (e.g. "round 2"), each client's reply is logged as it arrives, and the
        clients still at work every `PROGRESS_EVERY_S` s, so a long round shows progress.
        """
        if not messages:
            return {}
        if what is None or not hasattr(self.grid, "pull_messages"):
            replies = list(self.grid.send_and_receive(list(messages.values()), timeout=timeout))
        else:
            replies = self._pull_logged(messages, timeout=timeout, what=what, names=names or {})
        by_id = self._nodes_by_message_id(messages)
        out: dict[int, Message] = {}
        for reply in replies:
            node = by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node in messages and node not in out:
                out[node] = reply
        return out

    @staticmethod
    def _nodes_by_message_id(messages: Mapping[int, Message]) -> dict[str, int]:
        return {
            m.metadata.message_id: node for node, m in messages.items() if m.metadata.message_id
        }

    def _pull_logged(
        self,
        messages: Mapping[int, Message],
        *,
        timeout: float,
        what: str,
        names: Mapping[int, str],
    ) -> list[Message]:
        """Push `messages` and pull their replies until all came or `timeout` s passed, with a
        log line per reply and a heartbeat naming the clients at work."""
        pending = set(self.grid.push_messages(list(messages.values())))
        by_id = self._nodes_by_message_id(messages)
        waiting = set(messages)
        t0 = time.monotonic()
        next_note = t0 + PROGRESS_EVERY_S
        replies: list[Message] = []
        while pending and time.monotonic() - t0 < timeout:
            for reply in self.grid.pull_messages(pending):
                pending.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
                node = by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                waiting.discard(node)
                log.info(
                    "%s: %s done (%d of %d, %.0f s)",
                    what,
                    node_label(node, names.get(node)),
                    len(messages) - len(waiting),
                    len(messages),
                    time.monotonic() - t0,
                )
            if pending and time.monotonic() >= next_note:
                log.info(
                    "%s: waiting for %s (%.0f s)",
                    what,
                    ", ".join(node_label(n, names.get(n)) for n in sorted(waiting)),
                    time.monotonic() - t0,
                )
                next_note += PROGRESS_EVERY_S
            if pending:
                time.sleep(PULL_INTERVAL_S)
        return replies

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
            kind = "timeout"
            reason = (
                f"timed out: no reply within round_timeout_s = {self.fed.round_timeout_s:g} s "
                "(the client is too slow, or died and the SuperLink has not noticed yet)"
            )
        elif reply.has_error():
            kind, reason = _error_reason(reply)
        else:
            return reply
        self.reject(
            phase=phase, round_idx=round_idx, node=node, name=name, reason=reason, kind=kind
        )
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
            kind = "identity"
            if reply is None:
                kind, reason = "timeout", "timed out: no reply to the identify query"
            elif reply.has_error():
                kind, reason = _error_reason(reply)
            else:
                try:
                    name = wire.identity_from_content(reply.content).name
                    reason = None
                except wire.WireError as err:
                    kind, reason = "invalid", str(err)
            if reply is not None and name is not None:
                self.identify_bytes[name] = {
                    "down": wire.message_size(messages[node]),
                    "up": wire.message_size(reply),
                }
                taken = [other for other, held in roster.items() if held == name]
                bound = self.spec.bound_nodes.get(name)
                if name not in known:
                    reason = f"not a client of {self.spec.path.name} ({sorted(known)})"
                elif bound is not None and bound != node:
                    reason = (
                        f"claims client {name!r}, which is bound to node {bound} (the node id "
                        "of its registered key): refused as an impersonation"
                    )
                elif taken:
                    reason = f"name already taken by node {taken[0]}"
                elif name not in self.active:
                    log.info(
                        "%s was dropped earlier in this run; it stays out", node_label(node, name)
                    )
                    continue
            if reason is not None:
                self.reject(
                    phase="identify", round_idx=None, node=node, name=name, reason=reason, kind=kind
                )
                continue
            assert name is not None
            roster[node] = name
        present = set(roster.values())
        for name in self.active:
            if name not in present:
                self.reject(
                    phase="identify",
                    round_idx=None,
                    node=None,
                    name=name,
                    reason="did not connect",
                    kind="unavailable",
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
