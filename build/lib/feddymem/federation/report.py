"""A plain-text summary of a federation's results.json (what `feddymem federate` prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_results"]

_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def _number(value: Any, width: int) -> str:
    return f"{value:>{width}.3f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def _kib(count: Any) -> str:
    return f"{count / 1024:>10.1f}" if isinstance(count, (int, float)) else f"{'-':>10}"


def format_results(results: Mapping[str, Any]) -> str:
    """Per client: image / pixel AUROC, AUPRO, F1-max, KiB up and down; then the mean, the
    rounds, wall time and every dropped client with its reason."""
    name_width = max([len("client"), *(len(n) for n in results.get("clients", {}))])
    head = f"{'client':<{name_width}} " + " ".join(f"{c:>11}" for c in _COLUMNS)
    lines = [
        f"federation {results.get('federation')}: {results.get('status')}"
        + (f" ({results['error']})" if results.get("error") else ""),
        head + f" {'KiB up':>10} {'KiB down':>10}",
    ]
    for name, client in sorted(results.get("clients", {}).items()):
        row = f"{name:<{name_width}} " + " ".join(_number(client.get(c), 11) for c in _COLUMNS)
        lines.append(row + f" {_kib(client.get('bytes_up'))} {_kib(client.get('bytes_down'))}")
    mean = results.get("mean", {})
    bytes_ = results.get("bytes", {})
    lines.append(f"{'mean':<{name_width}} " + " ".join(_number(mean.get(c), 11) for c in _COLUMNS))
    lines.append(
        f"all clients: {_kib(bytes_.get('total_up')).strip()} KiB up, "
        f"{_kib(bytes_.get('total_down')).strip()} KiB down"
    )
    wall = results.get("wall_s", {})
    rounds = results.get("rounds", [])
    lines.append(
        f"rounds 0..{results.get('rounds_completed')} "
        f"({len(rounds)} in results), wall {wall.get('total', 0.0):.1f} s"
        + (
            f", resumed after round {results['resumed_from_round']}"
            if results.get("resumed_from_round") is not None
            else ""
        )
    )
    shape = results.get("global_memory", {}).get("shape")
    if shape:
        lines.append(f"global memory M_g: {shape[0]} x {shape[1]}")
    for rejected in results.get("rejected", []):
        where = rejected.get("phase")
        if rejected.get("round") is not None:
            where = f"round {rejected['round']}"
        who = rejected.get("client") or f"node {rejected.get('node_id')}"
        lines.append(f"dropped {who} ({where}): {rejected.get('reason')}")
    return "\n".join(lines)
