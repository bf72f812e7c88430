"""Server checkpoints: after every round, what a resumed run needs to continue identically.

``<out>/checkpoints/round_XXX.pt`` holds the round t just finished, M_g after its k-means, the
run id, the clients still in the federation, the history so far (bytes, times, rejections) and
the resolved settings. Written atomically (temporary file, then rename) before the next round's
messages leave, so no client can be more than one round ahead of the latest checkpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from feddymem.outputs import atomic_open

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "RunState",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^round_(\d{3,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to other settings."""


@dataclass
class RunState:
    """The server's state after round `round_idx` (-1: nothing done yet)."""

    run_id: str
    settings: dict[str, Any]
    round_idx: int = -1
    global_memory: torch.Tensor | None = None
    active: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_path(out: Path, round_idx: int) -> Path:
    """``<out>/checkpoints/round_XXX.pt``."""
    return out / CHECKPOINT_DIR / f"round_{round_idx:03d}.pt"


def save_checkpoint(out: Path, state: RunState) -> Path:
    """Write `state` as the checkpoint of its round (atomically)."""
    if state.global_memory is None or state.round_idx < 0:
        raise CheckpointError("nothing to checkpoint before round 0 is aggregated")
    path = checkpoint_path(out, state.round_idx)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "round": state.round_idx,
        "global_memory": state.global_memory.detach().cpu().contiguous(),
        "run_id": state.run_id,
        "active": list(state.active),
        # JSON text keeps the history exact and loadable with weights_only=True
        "settings_json": json.dumps(state.settings, sort_keys=True),
        "rounds_json": json.dumps(state.rounds),
        "rejected_json": json.dumps(state.rejected),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint of the highest round in `out`, or None."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> RunState:
    """Read a checkpoint written by `save_checkpoint`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return RunState(
            run_id=str(payload["run_id"]),
            settings=json.loads(payload["settings_json"]),
            round_idx=int(payload["round"]),
            global_memory=payload["global_memory"],
            active=[str(n) for n in payload["active"]],
            rounds=json.loads(payload["rounds_json"]),
            rejected=json.loads(payload["rejected_json"]),
        )
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint: {err}") from None
