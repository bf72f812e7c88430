"""Run a whole federation on one machine with Flower's simulation engine (Ray backend).

`run_federation(spec, out)` builds the ServerApp and ClientApp with the spec path and output
folder as run-config defaults, simulates one SuperNode per client of the spec and returns the
parsed ``results.json``. Simulated clients keep their state in ``<out>/clients``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

import ray
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from feddymem.federation.client_app import build_client_app
from feddymem.federation.client_data import describe_clients
from feddymem.federation.localray import LOOPBACK_INIT_ARGS, contained_ray
from feddymem.federation.participants import FederationError
from feddymem.federation.runconfig import FEATURE_CACHE, OUT, RESUME, SPEC, WORK_DIR, Value
from feddymem.federation.server_app import build_server_app
from feddymem.federation.server_base import RESULTS_FILE
from feddymem.federation.spec import FederationSpec, load_spec

__all__ = ["CLIENT_DIR", "Resources", "run_defaults", "run_federation", "simulate"]

log = logging.getLogger(__name__)

CLIENT_DIR = "clients"


class _QuietFlower(logging.Filter):
    """While a simulation runs: Flower logs through its own handler only (its DEBUG lines would
    otherwise reach the application's root handler) and without the notice that
    `run_simulation` is deprecated (we use it on purpose: in-process, no FAB needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.logger = logging.getLogger("flwr")
        self.propagate = self.logger.propagate
        self.logger.propagate = False
        self.logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()

    def restore(self) -> None:
        self.logger.removeFilter(self)
        self.logger.propagate = self.propagate


class Resources(TypedDict, total=False):
    """What a simulation may use (`simulate`'s defaults where not given).

    Attributes:
        num_cpus: CPUs Ray may use in all (2).
        cpus_per_client: CPUs reserved per simulated client (1.0: on 2 cores, two at a time).
        object_store_mb: Ray's object store size (256; memories and models are small).
        verbose: Let Flower and Ray log at DEBUG level (False).
    """

    num_cpus: int
    cpus_per_client: float
    object_store_mb: int
    verbose: bool


def run_defaults(
    spec_file: Path,
    out: Path,
    *,
    feature_cache: str | Path | None,
    extra: Mapping[str, Value] | None = None,
) -> dict[str, Value]:
    """The run-config defaults a simulation gives its apps: the spec, the output folder, the
    clients' folder ``<out>/clients``, the method's `extra` keys and the feature cache (when
    given; else each client's own under its folder)."""
    defaults: dict[str, Value] = {
        SPEC: str(spec_file),
        OUT: str(out),
        WORK_DIR: str(out / CLIENT_DIR),
        **(extra or {}),
    }
    if feature_cache is not None:
        defaults[FEATURE_CACHE] = str(Path(feature_cache).expanduser().resolve())
    return defaults


def run_federation(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    feature_cache: str | Path | None = None,
    **resources: Unpack[Resources],
) -> dict[str, Any]:
    """Simulate the federation of `spec_path`, writing into `out_dir`; returns results.json.

    Args:
        spec_path: Federation spec TOML (`feddymem.federation.spec`).
        out_dir: Output folder: checkpoints, results.json, global_memory.pt, clients' state.
        resume: Continue after the latest checkpoint in `out_dir`.
        feature_cache: Folder of cached patch features shared across runs (default:
            ``<out>/clients/feature-cache``, this run's own).
        **resources: CPUs, Ray's object store, verbosity (`Resources`).

    Raises:
        SpecError / DataError / PartitionError: the spec or a client's data is unusable
            (checked before any process starts).
        FederationError: the run failed; results.json holds ``status = "failed"`` and why.
    """
    spec_file = Path(spec_path).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    spec = load_spec(spec_file)
    results_file = prepare_output(spec, out)
    defaults = run_defaults(spec_file, out, feature_cache=feature_cache, extra={RESUME: resume})
    return simulate(
        server_app=build_server_app(defaults=defaults),
        client_app=build_client_app(defaults=defaults),
        num_supernodes=spec.num_clients,
        results_file=results_file,
        what="federation",
        **resources,
    )


def prepare_output(spec: FederationSpec, out: Path) -> Path:
    """Before Ray starts: check and log every client's data (a missing folder or a split that
    cannot be made fails here, fast), make `out` and remove a stale results.json from it.

    Returns:
        The path the run's results.json will have.
    """
    for client in describe_clients(spec):
        log.info(
            "client %s: %d training normals, %d test images (%s)",
            client["name"],
            client["n_train"],
            client["n_test"],
            ", ".join(client["sources"]),
        )
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / RESULTS_FILE
    if results_file.exists():
        results_file.unlink()  # a stale file must never pass for this run's result
    return results_file


def simulate(
    *,
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    results_file: Path,
    what: str,
    num_cpus: int = 2,
    cpus_per_client: float = 1.0,
    object_store_mb: int = 256,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run a ServerApp and ClientApp on Flower's simulation engine (Ray, started and stopped
    here unless already running; its services on loopback only and every process it starts
    ended on return, SIGTERM or SIGINT: `localray.contained_ray`) and return the
    ``results.json`` the ServerApp wrote.

    Raises:
        FederationError: no results file, a status other than ``completed``, or an engine error.
    """
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "object_store_memory": object_store_mb * 1024 * 1024,
            **LOOPBACK_INIT_ARGS,
            "log_to_driver": verbose,
            "logging_level": "DEBUG" if verbose else "ERROR",
        },
    }
    started_ray = not ray.is_initialized()
    error: BaseException | None = None
    quiet = _QuietFlower() if not verbose else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
            with contained_ray(backend_config["init_args"]):
                run_simulation(
                    server_app=server_app,
                    client_app=client_app,
                    num_supernodes=num_supernodes,
                    backend_config=backend_config,
                    verbose_logging=verbose,
                )
    except Exception as err:  # Flower re-raises the ServerApp's exception here
        error = err
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
        if quiet is not None:
            quiet.restore()
    if not results_file.is_file():
        raise FederationError(f"the simulation wrote no {results_file}: {error}") from error
    results: dict[str, Any] = json.loads(results_file.read_text(encoding="utf-8"))
    if results.get("status") != "completed":
        raise FederationError(f"{what} failed: {results.get('error')}") from error
    if error is not None:
        raise FederationError(f"simulation failed after writing results: {error}") from error
    return results
