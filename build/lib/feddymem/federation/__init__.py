"""FedDyMem on Flower: the only package of feddymem that imports `flwr`.

* `spec`        the federation spec (TOML) -> frozen dataclasses
* `wire`        record keys and converters of every message
* `client_app`  the ClientApp (train / evaluate / query handlers)
* `server_app`  the ServerApp (round loop, validation, checkpoints, results.json)
* `simulation`  `run_federation(spec, out)` on Flower's simulation engine

Deployment across machines (SuperLink + SuperNodes with TLS, `flwr run`) is in deploy/README.md.
"""

import logging
import os

# Flower reads this when its modules load. This project runs on offline sites: no telemetry
# unless the user asks for it.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# Flower's state store logs alembic's plugin set-up at INFO when it loads; keep that out of our
# output unless the application chose a level for it.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

from feddymem.federation.spec import FederationSpec, SpecError, load_spec

__all__ = ["FederationSpec", "SpecError", "load_spec", "run_federation"]


def __getattr__(name: str) -> object:
    # run_federation pulls in Ray and Flower's simulation engine: load it on first use.
    if name == "run_federation":
        from feddymem.federation.simulation import run_federation

        return run_federation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
