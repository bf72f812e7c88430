"""fed-padim's ServerApp: one round of moments, summed into the pooled PaDiM model.

1. connect and identify the spec's clients (`Participants`, as every federated method here);
2. ``train``: each site replies its moments (n, sum x, sum x x^T per grid position); a reply
   whose grid, channels or input size differs from the first accepted one is rejected (every
   site must resize to one input size: ``keep_aspect = false`` for mixed aspects);
3. the server adds the accepted moments (`PatchMoments.pooled`: exactly the moments of the
   pooled training images) and sends them in the ``evaluate`` message; each site fits the
   Gaussians and its own threshold, and reports its test metrics.

Bytes per client for the round: up = the moments reply, down = the train order plus the pooled
moments (the evaluate message). results.json has the FedDyMem server's keys.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from feddymem.config import to_dict
from feddymem.detect.gaussian import GaussianConfig, PatchMoments, gaussian_config_like
from feddymem.federation import wire
from feddymem.federation.fedpadim import wire as padim_wire
from feddymem.federation.participants import EVAL_METRICS, FederationError, Participants
from feddymem.federation.runconfig import ServerSettings, Value, server_settings
from feddymem.federation.server_base import build_app, failure, versions, write_results
from feddymem.federation.spec import FederationSpec, load_spec

__all__ = ["build_fedpadim_server_app", "gaussian_config", "serve_fed_padim"]

log = logging.getLogger(__name__)


def gaussian_config(spec: FederationSpec) -> GaussianConfig:
    """The Gaussian settings every site uses: the spec's feature settings and seed, and its
    `upload_noise` as the noise on the patch vectors that enter the moments a site sends, and
    its threshold calibration (held out unless the spec asks for "crossfit": on the demo's sites the
    held-out tenth met the criterion and the cross-fit did not, docs/detector.md)."""
    return gaussian_config_like(
        spec.model,
        moment_noise=spec.model.upload_noise,
        calibration=spec.model.calibration or "holdout",  # fed-padim's default
        calibration_folds=spec.model.calibration_folds,
        # the sites' moments are summed on one grid of whole images at the federation's size:
        # a site's tile plan would not be (a FedDyMem site with `tile` still tiles)
        tile="off",
    )


def _message(orders: padim_wire.Orders, node: int, kind: str, extra: RecordDict | None) -> Message:
    content = RecordDict({padim_wire.ORDERS: padim_wire.orders_to_record(orders)})
    for key, record in (extra or RecordDict()).items():
        content[key] = record
    return Message(content, dst_node_id=node, message_type=kind, group_id=f"fed-padim-{kind}")


def _collect(
    people: Participants, roster: Mapping[int, str], orders: padim_wire.Orders, timeout: float
) -> tuple[dict[str, PatchMoments], tuple[int, int], dict[str, dict[str, int]]]:
    """Round 1: every site's moments, checked; the others dropped with why."""
    messages = {node: _message(orders, node, "train", None) for node in roster}
    replies = people.exchange(messages, timeout=timeout)
    accepted: dict[str, PatchMoments] = {}
    rows: dict[str, dict[str, int]] = {}
    reference: tuple[tuple[int, ...], tuple[int, int]] | None = None
    for node, name in sorted(roster.items(), key=lambda item: item[1]):
        rows[name] = {"bytes_down": wire.message_size(messages[node]), "bytes_up": 0}
        reply = people.usable_reply(replies, phase="train", round_idx=1, node=node, name=name)
        if reply is None:
            continue
        rows[name]["bytes_up"] = wire.message_size(reply)
        try:
            if wire.identity_from_content(reply.content).name != name:
                raise wire.WireError("the reply names another client")
            moments, image_hw = padim_wire.moments_from_content(reply.content)
            assert moments.total is not None
            shape = (*moments.total.shape, *(moments.grid_hw or ()))
            if reference is not None and reference != (shape, image_hw):
                raise wire.WireError(
                    f"moments of shape {shape} at input {image_hw}, expected {reference[0]} at "
                    f"{reference[1]} (every site needs one input size: keep_aspect = false)"
                )
        except wire.WireError as err:
            people.reject(phase="train", round_idx=1, node=node, name=name, reason=str(err))
            continue
        reference = reference or (shape, image_hw)
        accepted[name] = moments
    people.keep(accepted)
    people.require(len(accepted), when="round 1")
    assert reference is not None
    return accepted, reference[1], rows


def serve_fed_padim(grid: Grid, spec: FederationSpec, out: Path) -> dict[str, Any]:
    """Run fed-padim on `grid` for the clients of `spec`; write and return results.json."""
    t0 = time.perf_counter()
    fed = spec.federation
    orders = padim_wire.Orders(fed.name, uuid.uuid4().hex[:12], gaussian_config(spec))
    people = Participants(grid, spec)
    roster = people.connect()
    moments, image_hw, rows = _collect(people, roster, orders, fed.round_timeout_s)
    pooled = PatchMoments.pooled([moments[n] for n in sorted(moments)])
    pooled_images = pooled.count
    log.info("fed-padim: pooled moments of %d images from %d sites", pooled_images, len(moments))
    record = RecordDict({padim_wire.MOMENTS: padim_wire.moments_to_record(pooled, image_hw)})
    active = {node: name for node, name in roster.items() if name in moments}
    messages = {node: _message(orders, node, "evaluate", record) for node in active}
    replies = people.exchange(messages, timeout=fed.round_timeout_s)
    evaluation: dict[str, dict[str, Any]] = {}
    eval_bytes: dict[str, dict[str, int]] = {}
    for node, name in active.items():
        rows[name]["bytes_down"] += wire.message_size(messages[node])
        reply = people.usable_reply(replies, phase="evaluate", round_idx=None, node=node, name=name)
        if reply is None:
            continue
        eval_bytes[name] = {"up": wire.message_size(reply), "down": 0}
        metrics: dict[str, Any] = dict(wire.metrics_from_content(reply.content))
        for key in EVAL_METRICS:
            metrics.setdefault(key, None)
        metrics["model_file"] = wire.identity_from_content(reply.content).model_file
        evaluation[name] = metrics
    if not evaluation:
        raise FederationError("evaluation: no client returned metrics")
    rounds_log = [{"round": 1, "phase": "moments", "clients": rows}]
    clients, mean, per_round = people.summary(
        rounds_log, evaluation=evaluation, eval_bytes=eval_bytes
    )
    results = {
        "status": "completed",
        "error": None,
        "federation": fed.name,
        "method": "fed-padim",
        "run_id": orders.run_id,
        "rounds_completed": 1,
        "clients": clients,
        "mean": mean,
        "evaluated_clients": sorted(evaluation),
        "rejected": people.rejected,
        "bytes": {"per_client_per_round": per_round, "evaluate": eval_bytes},
        "rounds": rounds_log,
        "pooled_images": pooled_images,
        "image_hw": list(image_hw),
        "settings": {"gaussian": to_dict(orders.config), "spec": spec.to_dict()},
        "wall_s": {"total": time.perf_counter() - t0},
        "versions": versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, results)
    return results


def _serve(grid: Grid, settings: ServerSettings) -> None:
    spec = load_spec(settings.spec)
    settings.out.mkdir(parents=True, exist_ok=True)
    try:
        serve_fed_padim(grid, spec, settings.out)
    except Exception as err:  # still leave a results.json that says so
        write_results(settings.out, {"status": "failed", "error": failure(err)})
        raise


def build_fedpadim_server_app(*, defaults: Mapping[str, Value] | None = None) -> ServerApp:
    """The fed-padim ServerApp; run-config values fall back to `defaults`."""
    return build_app(_serve, server_settings, defaults=defaults)
