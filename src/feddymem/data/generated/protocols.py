"""Protocols of a mixture: how its images are dealt to the clients.

``standard``     every client trains and tests on its recipe's source shares (the table's
                 original columns): every site has a fair share of every normal it meets.
``few-normals``  the standard deal, then each client keeps only the first ``k`` of its training
                 normals (split over its sources by its shares): a new line joining the
                 federation.  Test splits are exactly the standard ones; training images are a
                 subset of the standard ones.
``new-variant``  client ``i`` trains on one source only, ``sources[i % S]``; its test split holds
                 half its own source and half ``sources[(i + 1) % S]``, a source only other
                 clients trained on (the line starts a variant the others already know).  Needs
                 at least as many clients as sources, so every novel source has a trainer.

Each client is still scored on its own test split only.  `Protocol.parse` reads the names used
by ``feddymem data mixture --protocol`` and the bench's data-set columns (``NAME.few-8``,
``NAME.new-variant``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FEW_NORMALS_K", "Protocol", "ProtocolError", "split_count"]

Kind = Literal["standard", "few-normals", "new-variant"]
KINDS: tuple[Kind, ...] = ("standard", "few-normals", "new-variant")
FEW_NORMALS_K = (8, 16, 32)
"""The k of the few-normals columns of the table."""


class ProtocolError(ValueError):
    """A protocol name or its k is invalid, or a recipe cannot be dealt by it."""


@dataclass(frozen=True)
class Protocol:
    """A dealing protocol (module docstring); ``k`` only for ``few-normals``."""

    kind: Kind = "standard"
    k: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProtocolError(f"unknown protocol {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind == "few-normals":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
                raise ProtocolError(f"few-normals needs k >= 2 training normals, got {self.k!r}")
        elif self.k is not None:
            raise ProtocolError(f"k applies to few-normals only, not {self.kind}")

    @property
    def tag(self) -> str:
        """``standard``, ``few-8`` or ``new-variant`` (folder suffix and column suffix)."""
        return f"few-{self.k}" if self.kind == "few-normals" else self.kind

    @classmethod
    def parse(cls, text: str) -> Protocol:
        """``standard``, ``few-K`` or ``new-variant`` -> Protocol."""
        if text.startswith("few-") and text[4:].isdigit():
            return cls("few-normals", int(text[4:]))
        if text in ("standard", "new-variant"):
            return cls(text)  # type: ignore[arg-type]
        raise ProtocolError(
            f"unknown protocol {text!r}; use standard, few-K (K >= 2 normals) or new-variant"
        )

    def train_shares(
        self, index: int, shares: Sequence[tuple[str, float]], sources: Sequence[str]
    ) -> list[tuple[str, float]]:
        """The source shares of client ``index``'s training normals."""
        if self.kind != "new-variant":
            return list(shares)
        return [(sources[index % len(sources)], 1.0)]

    def test_shares(
        self, index: int, shares: Sequence[tuple[str, float]], sources: Sequence[str]
    ) -> list[tuple[str, float]]:
        """The source shares of client ``index``'s test split (normals and anomalies)."""
        if self.kind != "new-variant":
            return list(shares)
        own, novel = sources[index % len(sources)], sources[(index + 1) % len(sources)]
        return [(own, 0.5), (novel, 0.5)]

    def check(self, n_clients: int, sources: Sequence[str], train_per_client: int) -> None:
        """Raise ProtocolError when this recipe cannot be dealt by the protocol."""
        if self.kind == "new-variant" and (len(sources) < 2 or n_clients < len(sources)):
            raise ProtocolError(
                f"new-variant needs >= 2 sources and at least as many clients as sources "
                f"(every novel source must have a trainer); got {len(sources)} source(s), "
                f"{n_clients} client(s)"
            )
        if self.kind == "few-normals" and self.k is not None and self.k > train_per_client:
            raise ProtocolError(
                f"few-normals k={self.k} exceeds the {train_per_client} training normals per "
                "client at this scale"
            )

    def kept_train(self, shares: Sequence[tuple[str, float]]) -> dict[str, int] | None:
        """few-normals: source -> training normals a client keeps; None: keep all."""
        if self.kind != "few-normals" or self.k is None:
            return None
        counts = split_count(self.k, [x for _, x in shares])
        return {s: n for (s, _), n in zip(shares, counts, strict=True)}


def split_count(total: int, shares: Sequence[float]) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``shares`` (largest remainder),
    each at least 1 when ``total`` allows."""
    raw = np.asarray(shares, dtype=np.float64) * total / float(sum(shares))
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    for i in range(len(counts)):
        if counts[i] == 0 and total >= len(counts):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return [int(c) for c in counts]
