"""The parameter-sharing baselines of the comparison table, on Flower's simulation engine.

``fedavg``   FedAvg (`flwr.serverapp.strategy.FedAvg`) over the memory generator G's weights;
             every client keeps a local memory M_k built from its own features with the current
             G (the same memory-reduce as FedDyMem) and trains G against it with the metric loss.
``fedprox``  the same with Flower's FedProx: clients add mu/2 ||w - w_global||^2.
``fedae``    a feature autoencoder (`feddymem.detect.autoencoder`) trained with FedAvg; score =
             reconstruction error. Round 0 pools the clients' feature statistics (per-channel
             mean and mean square, averaged by FedAvg with the patch counts as weights) into the
             standardisation every client shares.

What travels: model weights (and, for FedAE's round 0, two (D,) statistics vectors), scalar
metrics and client names; never images, features or memories (`param_wire`). Bytes are the
serialised messages, per client per round, both directions.

`run_param_sharing(spec, out, method=...)` reads the same federation spec as FedDyMem
(`feddymem.federation.spec`; its ``[model]`` table is the FedDyMemConfig every method shares)
and writes ``<out>/results.json`` with the FedDyMem server's keys.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Unpack

from feddymem.federation.baselines.client_app import build_param_client_app
from feddymem.federation.baselines.server_app import build_param_server_app
from feddymem.federation.baselines.settings import (
    DEFAULT_PROXIMAL_MU,
    LOCAL_EPOCHS,
    METHOD,
    PROXIMAL_MU,
    ROUNDS,
)
from feddymem.federation.baselines.wire import METHODS, Method
from feddymem.federation.simulation import Resources, prepare_output, run_defaults, simulate
from feddymem.federation.spec import SpecError, load_spec

__all__ = ["DEFAULT_PROXIMAL_MU", "METHODS", "Method", "run_param_sharing"]

log = logging.getLogger(__name__)


def run_param_sharing(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    method: Method,
    rounds: int | None = None,
    local_epochs: int | None = None,
    proximal_mu: float = DEFAULT_PROXIMAL_MU,
    feature_cache: str | Path | None = None,
    **resources: Unpack[Resources],
) -> dict[str, Any]:
    """Simulate one parameter-sharing baseline on the federation of `spec_path`.

    Args:
        spec_path: Federation spec TOML (`feddymem.federation.spec`).
        out_dir: Output folder: results.json, global_model.pt, the clients' files.
        method: ``fedavg``, ``fedprox`` or ``fedae``.
        rounds: R training rounds (default: the spec's ``[federation] rounds``).
        local_epochs: E local epochs per round (default: the spec's ``[model] local_epochs``).
        proximal_mu: FedProx's mu (ignored by ``fedavg`` / ``fedae``).
        feature_cache: Folder of cached patch features shared across runs and methods
            (default: ``<out>/clients/feature-cache``).
        **resources: CPUs, Ray's object store, verbosity (`Resources`).

    Returns:
        The parsed results.json (keys as the FedDyMem server's: status, error,
        rounds_completed, clients, mean, bytes, wall_s, settings, ...).

    Raises:
        SpecError / DataError / PartitionError: the spec or a client's data is unusable, or an
            option is out of range (checked before any process starts).
        FederationError: the run failed; results.json holds ``status = "failed"`` and why.
    """
    if method not in METHODS:
        raise SpecError(f"unknown method {method!r}; known: {list(METHODS)}")
    if rounds is not None and rounds < 0:
        raise SpecError(f"rounds must be >= 0, got {rounds}")
    if local_epochs is not None and local_epochs < 0:
        raise SpecError(f"local_epochs must be >= 0, got {local_epochs}")
    if not math.isfinite(proximal_mu) or proximal_mu < 0:
        raise SpecError(f"proximal_mu must be finite and >= 0, got {proximal_mu}")
    spec_file = Path(spec_path).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    spec = load_spec(spec_file)
    if method != "fedae" and not spec.model.generator:
        raise SpecError(f"{spec_file} [model]: {method} shares G's weights: needs generator = true")
    results_file = prepare_output(spec, out)  # fails fast, before Ray starts

    defaults = run_defaults(
        spec_file,
        out,
        feature_cache=feature_cache,
        extra={
            METHOD: method,
            ROUNDS: -1 if rounds is None else int(rounds),
            LOCAL_EPOCHS: -1 if local_epochs is None else int(local_epochs),
            PROXIMAL_MU: float(proximal_mu),
        },
    )
    log.info("%s on %s: simulating %d client(s)", method, spec.federation.name, spec.num_clients)
    return simulate(
        server_app=build_param_server_app(defaults=defaults),
        client_app=build_param_client_app(defaults=defaults),
        num_supernodes=spec.num_clients,
        results_file=results_file,
        what=method,
        **resources,
    )
