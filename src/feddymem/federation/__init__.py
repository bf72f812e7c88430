"""FedDyMem on Flower: the only package of feddymem that imports `flwr`.

* `spec`         the federation spec (TOML) -> frozen dataclasses
* `client_data`  a client's samples, from the spec or a site's own roots
* `wire`         record keys and converters of every message
* `limits`       what an upload may be, and the checks against it
* `client_base`  what every ClientApp shares (factory, query handler, error guard)
* `client_app`   the FedDyMem ClientApp (train / evaluate handlers)
* `server_base`  what every ServerApp shares (factory, evaluation, results.json)
* `server_app`   the FedDyMem ServerApp (round loop, validation, checkpoints)
* `simulation`   `run_federation(spec, out)` on Flower's simulation engine

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
