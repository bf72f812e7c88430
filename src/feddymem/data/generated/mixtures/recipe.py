"""What a mixture recipe is made of: per-client sizes at each scale, clients and their source
shares, and what a recipe's sources need to open."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from feddymem.data.generated.mixtures.sources import Source

Scale = Literal["quick", "full"]
Role = Literal["train", "good", "anomalous"]
ROLES: tuple[Role, ...] = ("train", "good", "anomalous")


@dataclass(frozen=True)
class ScaleSizes:
    """Images per client at one scale: training normals, held-out normals, anomalies."""

    train: int
    good: int
    anomalous: int

    def of(self, role: Role) -> int:
        """The count for ``role``."""
        return {"train": self.train, "good": self.good, "anomalous": self.anomalous}[role]


SCALES: dict[str, ScaleSizes] = {
    "quick": ScaleSizes(train=30, good=10, anomalous=10),
    "full": ScaleSizes(train=80, good=25, anomalous=25),
}
"""Per-client sizes: ``quick`` for smoke runs, ``full`` for the comparison table (2 CPU cores)."""


@dataclass(frozen=True)
class ClientRecipe:
    """One client: its name and the share of its images each source gives.

    Attributes:
        name: Client name (a folder name and the spec's ``[[clients]] name``).
        shares: ``(source, share)`` pairs; shares are positive and sum to 1.
    """

    name: str
    shares: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class MixtureRecipe:
    """A registered mixture.

    Attributes:
        name: Registry key, output folder name and federation name.
        description: One line for ``--list``.
        sources: Source names (folder names under each client).
        clients: The clients and their source shares.
        needs_shared_data: Reads the real sets under the shared-data folder.
        pixel_masks: Every anomalous image has a mask (else image labels only).
        open_sources: Makes the sources from a build context.
    """

    name: str
    description: str
    sources: tuple[str, ...]
    clients: tuple[ClientRecipe, ...]
    needs_shared_data: bool
    pixel_masks: bool
    open_sources: Callable[[BuildContext], dict[str, Source]]


@dataclass(frozen=True)
class BuildContext:
    """What sources need to open: where the inputs are and where to cache exports."""

    mixture: str
    seed: int
    shared_data: Path | None
    elpv_cache: Path
