"""A long exchange with the clients logs each reply as it arrives and who is still at work."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from feddymem.federation import participants as parts


class SlowGrid:
    """Replies of node 1 on the first pull, of node 2 on the fourth: a slow client."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        return [f"m{m.dst}" for m in messages]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        ready = {"m1": 1, "m2": 4}
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i, src_node_id=int(i[1:])))
            for i in ids
            if ready[i] == self.pulls
        ]


def test_each_reply_and_the_clients_at_work_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(parts, "PULL_INTERVAL_S", 0.0)
    monkeypatch.setattr(parts, "PROGRESS_EVERY_S", 0.0)  # a heartbeat on every empty poll
    group = parts.Participants.__new__(parts.Participants)
    group.grid = SlowGrid()
    messages = {
        n: SimpleNamespace(dst=n, metadata=SimpleNamespace(message_id=f"m{n}")) for n in (1, 2)
    }
    with caplog.at_level(logging.INFO, logger=parts.__name__):
        replies = group.exchange(
            messages,
            timeout=60.0,
            what="round 3",
            names={1: "mono", 2: "poly"},  # type: ignore[arg-type]
        )
    assert sorted(replies) == [1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("round 3: client mono (node 1) done (1 of 2")
    assert any(line.startswith("round 3: waiting for client poly (node 2)") for line in lines)
    assert lines[-1].startswith("round 3: client poly (node 2) done (2 of 2")
