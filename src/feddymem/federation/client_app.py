"""The FedDyMem ClientApp: thin handlers around one `FedDyMemClient`.

``query``     who are you: reply the client's name
``train``     round t: unpack (t, config, M_g), `fit_round`, reply (M_k, weights, n_k, metrics)
``evaluate``  unpack M_g, `evaluate` and `export`, reply metrics

A client finds its data from its node config (deployed site: ``name`` and ``data``) or, in a
simulation, from the spec's client at ``partition-id`` (`feddymem.federation.runconfig`). Its
state lives in ``<work-dir>/<name>/<run-name>-<run-id>/`` and is rebuilt from disk for every
message: in a deployment every message starts a fresh process, and a simulation does the same so
both take one code path (and a resumed run continues from exactly that state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feddymem.config import FedDyMemConfig
from feddymem.federation import wire
from feddymem.federation.client_base import (
    MODEL_FILE,
    ClientStateError,
    SiteOf,
    build_site_app,
    client_data,
    client_noise_key,
    identity_record,
)
from feddymem.federation.client_data import ClientData
from feddymem.federation.limits import expected_dim
from feddymem.federation.runconfig import SiteSettings, Value
from feddymem.method.seeds import round_seed

if TYPE_CHECKING:
    import torch

    from feddymem.method.client import FedDyMemClient

__all__ = ["app", "build_client_app"]

log = logging.getLogger(__name__)


def state_dir(site: SiteSettings, *, name: str, instructions: wire.Instructions) -> Path:
    """``<work-dir>/<name>/<run-name>-<run-id>``: one state folder per client and run."""
    return site.work_dir / name / f"{instructions.run_name}-{instructions.run_id}"


def client_class() -> type[FedDyMemClient]:
    """The FedDyMem client class, imported on first use: a deployed site starts a fresh process
    per message, and the ``query`` handler should not pay for the model's imports."""
    from feddymem.method.client import FedDyMemClient

    return FedDyMemClient


def _open_client(
    site: SiteSettings, *, config: FedDyMemConfig, instructions: wire.Instructions
) -> tuple[ClientData, FedDyMemClient, Path]:
    data = client_data(site)
    folder = state_dir(site, name=data.name, instructions=instructions)
    client = client_class()(
        train=data.train,
        test=data.test,
        config=config,
        state_dir=folder,
        feature_cache=site.features_dir,
        public=data.public,
        noise_key=client_noise_key(site, folder),
    )
    return data, client, folder


def _provenance(instructions: wire.Instructions, *, site: str, stage: str) -> dict[str, Any]:
    """Where a model file written by the ClientApp comes from (its header says it)."""
    return {
        "source": "federation",
        "run": f"{instructions.run_name}-{instructions.run_id}",
        "round": int(instructions.round_idx),
        "site": site,
        "stage": stage,
        "written_at": time.time(),
    }


def _export_round_model(
    client: FedDyMemClient,
    global_memory: torch.Tensor,
    folder: Path,
    instructions: wire.Instructions,
    *,
    site: str,
) -> None:
    """The site's best model so far (this round's G_k, the M_g it trained against), written
    atomically where a scoring service (`feddymem serve`) watches it; a failed write is logged
    and leaves the round's reply alone."""
    try:
        client.export(
            global_memory,
            folder / MODEL_FILE,
            provenance=_provenance(instructions, site=site, stage="round"),
        )
    except Exception:
        log.exception("round %d: the site's model file was not written", instructions.round_idx)


def _train(message: Message, context: Context, settings: SiteOf) -> Message:
    """Round t: fit_round against M_g, reply the reduced memory M_k."""
    t0 = time.perf_counter()
    instructions = wire.instructions_from_content(message.content)
    config = wire.config_from_content(message.content)
    global_memory = wire.global_memory_from_content(
        message.content, fmt=wire.WireFormat.of(config), dim=expected_dim(config)
    )
    data, client, folder = _open_client(settings(context), config=config, instructions=instructions)
    if client.rounds_done > instructions.round_idx:
        raise ClientStateError(
            f"client {data.name} has done round {client.rounds_done} of this run, the server "
            f"asks for round {instructions.round_idx}: resume from the latest checkpoint"
        )
    memory, metrics = client.fit_round(
        round_idx=instructions.round_idx, global_memory=global_memory
    )
    if global_memory is not None:
        _export_round_model(client, global_memory, folder, instructions, site=data.name)
    arrays, info = wire.memory_to_records(
        memory,
        dtype=wire.WireFormat.of(config),
        seed=round_seed(config.seed, instructions.round_idx),
    )
    metrics = {**metrics, "client_s": time.perf_counter() - t0}
    content = RecordDict(
        {
            wire.CLIENT: identity_record(data.name),
            wire.MEMORY: arrays,
            wire.MEMORY_INFO: info,
            wire.METRICS: wire.metrics_to_record(metrics),
        }
    )
    return Message(content, reply_to=message)


def _evaluate(message: Message, context: Context, settings: SiteOf) -> Message:
    """Evaluate with the final M_g, export the model file, reply metrics only."""
    t0 = time.perf_counter()
    instructions = wire.instructions_from_content(message.content)
    config = wire.config_from_content(message.content)
    global_memory = wire.global_memory_from_content(
        message.content, fmt=wire.WireFormat.of(config), dim=expected_dim(config)
    )
    if global_memory is None:
        raise wire.WireError("an evaluate message must carry the global memory")
    data, client, folder = _open_client(settings(context), config=config, instructions=instructions)
    detection, at_threshold = client.evaluate_at_threshold(global_memory)
    metrics = {**detection.as_dict(), **at_threshold}
    model_file = folder / MODEL_FILE
    client.export(
        global_memory,
        model_file,
        provenance=_provenance(instructions, site=data.name, stage="final"),
    )
    values = {**metrics, "n_test": len(data.test), "client_s": time.perf_counter() - t0}
    content = RecordDict(
        {
            wire.CLIENT: identity_record(data.name, str(model_file)),
            wire.METRICS: wire.metrics_to_record(values),
        }
    )
    return Message(content, reply_to=message)


def build_client_app(*, defaults: Mapping[str, Value] | None = None) -> ClientApp:
    """A ClientApp whose run-config values fall back to `defaults` (a simulation sets them)."""
    return build_site_app(train=_train, evaluate=_evaluate, defaults=defaults)


# The app `flwr run` loads (deploy/feddymem-app/pyproject.toml points here).
app = build_client_app()
