"""What every ClientApp here shares: the app factory with its ``query`` handler, the site's
settings, its name and data, and the guard that turns a failing handler into an Error reply.

FedDyMem's ClientApp (`feddymem.federation.client_app`), the parameter-sharing baselines'
(`feddymem.federation.baselines.client_app`) and fed-padim's
(`feddymem.federation.fedpadim.client_app`) differ only in their ``train`` and ``evaluate``
handlers (`build_site_app`).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from feddymem.allocator import keep_freed_memory
from feddymem.federation import wire
from feddymem.federation.applog import ensure_app_logging
from feddymem.federation.client_data import ClientData, load_client_data, load_site_data
from feddymem.federation.runconfig import SiteSettings, Value, site_settings
from feddymem.federation.spec import load_spec

__all__ = [
    "CLIENT_ERROR_CODE",
    "MODEL_FILE",
    "ClientStateError",
    "Handler",
    "SiteHandler",
    "SiteOf",
    "build_site_app",
    "client_data",
    "client_name",
    "client_noise_key",
    "guarded",
    "identity_record",
    "site_noise_key",
]

# every ClientApp's handler failures log under the FedDyMem ClientApp's logger
log = logging.getLogger("feddymem.federation.client_app")

# Error code of a reply whose handler failed (Flower's own codes are small integers).
CLIENT_ERROR_CODE = 100
MODEL_FILE = "feddymem_model.pt"
NOISE_KEY_FILE = "noise.key"

Handler = Callable[[Message, Context], Message]
# how a handler reads its site's settings from the context
SiteOf = Callable[[Context], SiteSettings]
# a ``train`` / ``evaluate`` handler of `build_site_app`
SiteHandler = Callable[[Message, Context, SiteOf], Message]


class ClientStateError(RuntimeError):
    """The client's state on disk does not fit what the server asks (e.g. it is rounds ahead)."""


def client_noise_key(site: SiteSettings, folder: Path) -> int:
    """The noise key of a client whose run state lives in `folder`: a deployed site's own secret
    (`site_noise_key`); 0 for a simulated client, whose server runs on the same operator's
    machine, so that a simulation (a benchmark) draws the same noise every time."""
    return site_noise_key(folder) if site.name is not None else 0


def site_noise_key(folder: Path) -> int:
    """The secret this site mixes into every noise seed of a run (`privacy.defences.
    defence_seed`): 63 random bits from the OS, drawn once per run and kept in `folder` (the
    run's state folder, readable by the site's user only), so a resumed run draws the same
    noise and nobody who knows only the config, the server included, can redraw it."""
    path = Path(folder) / NOISE_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # written whole to a private temporary file, then linked into place: never a
        # half-written key, and of two processes drawing at once the first link wins
        key = secrets.randbits(63) or 1
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".noise-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{key}\n")
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    text = path.read_text().strip()
    if not text.isdigit() or int(text) == 0:
        raise ClientStateError(f"{path}: not a noise key; remove it to draw a new one")
    return int(text)


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
        return load_site_data(site.name, site.roots, public=site.public)
    assert site.spec is not None and site.partition_id is not None
    return load_client_data(load_spec(site.spec), site.partition_id)


def identity_record(name: str, model_file: str | None = None) -> ConfigRecord:
    """The record that names the replying client (and the model file it wrote)."""
    return wire.identity_to_record(wire.ClientIdentity(name=name, model_file=model_file))


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


def _identify(message: Message, context: Context, settings: SiteOf) -> Message:
    """Reply this client's name."""
    name = client_name(settings(context))
    return Message(RecordDict({wire.CLIENT: identity_record(name)}), reply_to=message)


def build_site_app(
    *,
    train: SiteHandler,
    evaluate: SiteHandler,
    defaults: Mapping[str, Value] | None = None,
    app: str = "FedDyMem",
) -> ClientApp:
    """A ClientApp answering ``query`` with the client's name and ``train`` / ``evaluate`` with
    the handlers given, each `guarded` (its failures logged under `app`). A handler reads its
    site's settings with the function it is passed; run-config values fall back to
    `defaults` (a simulation sets them)."""
    fallback: dict[str, Value] = dict(defaults or {})
    keep_freed_memory()  # the process that runs the app reuses freed memory
    client_app = ClientApp()

    def settings(context: Context) -> SiteSettings:
        return site_settings(context.node_config, context.run_config, defaults=fallback)

    def handle(handler: SiteHandler) -> Handler:
        def run(message: Message, context: Context) -> Message:
            return handler(message, context, settings)

        run.__name__ = handler.__name__.lstrip("_")
        run.__doc__ = handler.__doc__
        return guarded(run, app=app)

    client_app.query()(handle(_identify))
    client_app.train()(handle(train))
    client_app.evaluate()(handle(evaluate))
    return client_app
