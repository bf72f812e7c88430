"""A plain-text summary of a federation's results.json (what `feddymem federate` prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_results"]

_COLUMNS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "recall_at_threshold",
    "false_alarm_rate_at_threshold",
)
# column heads: the key, or a short name for the operating point at the site's threshold
_HEADS = {"recall_at_threshold": "recall@thr", "false_alarm_rate_at_threshold": "FAR@thr"}


def _number(value: Any, width: int) -> str:
    return f"{value:>{width}.3f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def _mb(count: Any, width: int = 10) -> str:
    return f"{count / 1e6:>{width}.2f}" if isinstance(count, (int, float)) else f"{'-':>{width}}"


def _per_round(rounds: Mapping[str, Mapping[str, int]] | None, key: str) -> float | None:
    """Mean bytes a round (`key` "up" or "down") over a client's training rounds."""
    if not rounds:
        return None
    return sum(r[key] for r in rounds.values()) / len(rounds)


def format_results(results: Mapping[str, Any]) -> str:
    """Per client: image / pixel AUROC, AUPRO, F1-max, recall and false-alarm rate at the site's
    own threshold, MB up and down per training round (mean over the rounds); then the mean, the
    whole run's bytes, the rounds, wall time, where each client's model file went and every
    dropped client with its reason."""
    clients = results.get("clients", {})
    name_width = max([len("client"), *(len(n) for n in clients)])
    head = f"{'client':<{name_width}} " + " ".join(f"{_HEADS.get(c, c):>11}" for c in _COLUMNS)
    lines = [
        f"federation {results.get('federation')}: {results.get('status')}"
        + (f" ({results['error']})" if results.get("error") else ""),
        head + f" {'MB up/rnd':>10} {'MB dn/rnd':>10}",
    ]
    bytes_ = results.get("bytes", {})
    per_round = bytes_.get("per_client_per_round", {})
    for name, client in sorted(clients.items()):
        row = f"{name:<{name_width}} " + " ".join(_number(client.get(c), 11) for c in _COLUMNS)
        rounds = per_round.get(name)
        lines.append(row + f" {_mb(_per_round(rounds, 'up'))} {_mb(_per_round(rounds, 'down'))}")
    mean = results.get("mean", {})
    lines.append(f"{'mean':<{name_width}} " + " ".join(_number(mean.get(c), 11) for c in _COLUMNS))
    for name, client in sorted(clients.items()):
        if client.get("false_alarm_rate_ci95_high") is not None:
            folds = int(client.get("calibration_folds") or 0)
            how = f"normals, {folds}-fold cross-fit" if folds else "held-out normals"
            lines.append(
                f"{name}: FAR@thr {client['false_alarm_rate_at_threshold']:.3f}, exact 95% "
                f"interval {client['false_alarm_rate_ci95_low']:.3f}-"
                f"{client['false_alarm_rate_ci95_high']:.3f} over "
                f"{client.get('test_normals', 0):.0f} test normals; threshold set on "
                f"{client.get('calibration_normals', 0):.0f} {how}"
            )
    lines.append(
        f"whole run, all clients (rounds, identify, evaluation): "
        f"{_mb(bytes_.get('total_up'), 0)} MB up, {_mb(bytes_.get('total_down'), 0)} MB down"
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
    for name, client in sorted(clients.items()):
        if client.get("model_file"):
            lines.append(f"model of {name}: {client['model_file']}")
    for rejected in results.get("rejected", []):
        where = rejected.get("phase")
        if rejected.get("round") is not None:
            where = f"round {rejected['round']}"
        who = rejected.get("client") or f"node {rejected.get('node_id')}"
        lines.append(f"dropped {who} ({where}): {rejected.get('reason')}")
    return "\n".join(lines)
