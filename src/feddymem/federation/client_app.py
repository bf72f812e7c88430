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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from feddymem.allocator import keep_freed_memory
from feddymem.config import FedDyMemConfig
from feddymem.federation import wire
from feddymem.federation.applog import ensure_app_logging
from feddymem.federation.runconfig import SiteSettings, Value, site_settings
from feddymem.federation.spec import ClientData, load_client_data, load_site_data, load_spec

if TYPE_CHECKING:
    from feddymem.method.client import FedDyMemClient

__all__ = ["CLIENT_ERROR_CODE", "MODEL_FILE", "ClientStateError", "app", "build_client_app"]

log = logging.getLogger(__name__)

# Error code of a reply whose handler failed (Flower's own codes are small integers).
CLIENT_ERROR_CODE = 100
MODEL_FILE = "feddymem_model.pt"


class ClientStateError(RuntimeError):
    """The client's state on disk does not fit what the server asks (e.g. it is rounds ahead)."""


def client_name(site: SiteSettings) -> str:
    if site.name is not None:
        return site.name
    assert site.spec is not None and site.partition_id is not None
    names = load_spec(site.spec).client_names
    if not 0 <= site.partition_id < len(names):
        raise ClientStateError(
            f"partition-id {site.partition_id} has no client in {site.spec} ({len(names)} defined)"
        )
    return names[site.partition_id]


def client_data(site: SiteSettings) -> ClientData:
    if site.name is not None:
        return load_site_data(site.name, site.roots)
    assert site.spec is not None and site.partition_id is not None
    return load_client_data(load_spec(site.spec), site.partition_id)


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


Handler = Callable[[Message, Context], Message]


def guarded(handler: Handler, *, app: str = "FedDyMem") -> Handler:
    """Reply a short Error (logged with its traceback here) instead of crashing the ClientApp."""

    def run(message: Message, context: Context) -> Message:
        ensure_app_logging()
        try:
            return handler(message, context)
        except Exception as err:
            log.exception("%s %s handler failed", app, message.metadata.message_type)
            reason = f"{type(err).__name__}: {err}"
            return Message(Error(code=CLIENT_ERROR_CODE, reason=reason[:2000]), reply_to=message)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def build_client_app(*, defaults: Mapping[str, Value] | None = None) -> ClientApp:
    """A ClientApp whose run-config values fall back to `defaults` (a simulation sets them)."""
    fallback: dict[str, Value] = dict(defaults or {})
    keep_freed_memory()  # the process that runs the app reuses freed memory
    app = ClientApp()

    def settings(context: Context) -> SiteSettings:
        return site_settings(context.node_config, context.run_config, defaults=fallback)

    @app.query()
    @guarded
    def identify(message: Message, context: Context) -> Message:
        """Reply this client's name."""
        name = client_name(settings(context))
        return Message(
            RecordDict({wire.CLIENT: wire.identity_to_record(wire.ClientIdentity(name=name))}),
            reply_to=message,
        )

    @app.train()
    @guarded
    def train(message: Message, context: Context) -> Message:
        """Round t: fit_round against M_g, reply the reduced memory M_k."""
        t0 = time.perf_counter()
        instructions = wire.instructions_from_content(message.content)
        config = wire.config_from_content(message.content)
        global_memory = wire.global_memory_from_content(message.content)
        data, client, folder = _open_client(
            settings(context), config=config, instructions=instructions
        )
        if client.rounds_done > instructions.round_idx:
            raise ClientStateError(
                f"client {data.name} has done round {client.rounds_done} of this run, the server "
                f"asks for round {instructions.round_idx}: resume from the latest checkpoint"
            )
        memory, metrics = client.fit_round(
            round_idx=instructions.round_idx, global_memory=global_memory
        )
        if global_memory is not None:
            # the site's best model so far (this round's G_k, the M_g it trained against),
            # written atomically where a scoring service (`feddymem serve`) watches it; a
            # failed write is logged and leaves the round's reply alone
            try:
                client.export(
                    global_memory,
                    folder / MODEL_FILE,
                    provenance=_provenance(instructions, site=data.name, stage="round"),
                )
            except Exception:
                log.exception(
                    "round %d: the site's model file was not written", instructions.round_idx
                )
        arrays, info = wire.memory_to_records(memory, dtype=config.wire_dtype)
        metrics = {**metrics, "client_s": time.perf_counter() - t0}
        content = RecordDict(
            {
                wire.CLIENT: wire.identity_to_record(wire.ClientIdentity(name=data.name)),
                wire.MEMORY: arrays,
                wire.MEMORY_INFO: info,
                wire.METRICS: wire.metrics_to_record(metrics),
            }
        )
        return Message(content, reply_to=message)

    @app.evaluate()
    @guarded
    def evaluate(message: Message, context: Context) -> Message:
        """Evaluate with the final M_g, export the model file, reply metrics only."""
        t0 = time.perf_counter()
        instructions = wire.instructions_from_content(message.content)
        config = wire.config_from_content(message.content)
        global_memory = wire.global_memory_from_content(message.content)
        if global_memory is None:
            raise wire.WireError("an evaluate message must carry the global memory")
        data, client, folder = _open_client(
            settings(context), config=config, instructions=instructions
        )
        detection, at_threshold = client.evaluate_at_threshold(global_memory)
        metrics = {**detection.as_dict(), **at_threshold}
        model_file = folder / MODEL_FILE
        client.export(
            global_memory,
            model_file,
            provenance=_provenance(instructions, site=data.name, stage="final"),
        )
        values = {**metrics, "n_test": len(data.test), "client_s": time.perf_counter() - t0}
        identity = wire.ClientIdentity(name=data.name, model_file=str(model_file))
        content = RecordDict(
            {
                wire.CLIENT: wire.identity_to_record(identity),
                wire.METRICS: wire.metrics_to_record(values),
            }
        )
        return Message(content, reply_to=message)

    return app


# The app `flwr run` loads (deploy/feddymem-app/pyproject.toml points here).
app = build_client_app()
