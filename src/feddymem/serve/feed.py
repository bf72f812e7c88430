"""The last decisions (from HTTP requests and the folder watcher), for the operator's page."""

from __future__ import annotations

import base64
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeedEntry:
    id: int
    at: float
    source: str  # "http" or "watch"
    name: str
    score: float
    threshold: float
    anomalous: bool
    version: str
    thumb_jpeg: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "source": self.source,
            "name": self.name,
            "score": self.score,
            "threshold": self.threshold,
            "decision": "anomalous" if self.anomalous else "normal",
            "model_version": self.version,
            "thumb": "data:image/jpeg;base64," + base64.b64encode(self.thumb_jpeg).decode(),
        }


class Feed:
    """A bounded, thread-safe list of the last `size` decisions (newest first)."""

    def __init__(self, size: int = 24) -> None:
        self._entries: deque[FeedEntry] = deque(maxlen=size)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(
        self,
        *,
        source: str,
        name: str,
        score: float,
        threshold: float,
        anomalous: bool,
        version: str,
        thumb_jpeg: bytes,
    ) -> None:
        with self._lock:
            self._entries.appendleft(
                FeedEntry(
                    id=next(self._ids),
                    at=time.time(),
                    source=source,
                    name=name[:200],
                    score=score,
                    threshold=threshold,
                    anomalous=anomalous,
                    version=version,
                    thumb_jpeg=thumb_jpeg,
                )
            )

    def since(self, after: int = 0) -> list[dict[str, Any]]:
        """Entries newer than id `after`, newest first."""
        with self._lock:
            entries = [e for e in self._entries if e.id > after]
        return [e.as_dict() for e in entries]
