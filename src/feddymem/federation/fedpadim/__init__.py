"""fed-padim: federated Gaussian statistics on Flower's simulation engine.

Each site sends, per grid position, its image count, sum and sum of outer products of the patch
features; the server adds them, which is exactly the PaDiM model of the pooled training images
(`feddymem.detect.gaussian.PatchMoments.pooled`), without any image leaving its site.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from feddymem.federation.simulation import prepare_output, run_defaults, simulate
from feddymem.federation.spec import load_spec

__all__ = ["run_fed_padim"]

log = logging.getLogger(__name__)


def run_fed_padim(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    feature_cache: str | Path | None = None,
    num_cpus: int = 2,
) -> dict[str, Any]:
    """Simulate fed-padim on the federation of `spec_path`; returns the parsed results.json."""
    from feddymem.federation.fedpadim.client_app import build_fedpadim_client_app
    from feddymem.federation.fedpadim.server_app import build_fedpadim_server_app

    spec_file = Path(spec_path).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    spec = load_spec(spec_file)
    results_file = prepare_output(spec, out)
    defaults = run_defaults(spec_file, out, feature_cache=feature_cache)
    log.info("fed-padim on %s: simulating %d client(s)", spec.federation.name, spec.num_clients)
    return simulate(
        server_app=build_fedpadim_server_app(defaults=defaults),
        client_app=build_fedpadim_client_app(defaults=defaults),
        num_supernodes=spec.num_clients,
        results_file=results_file,
        what="fed-padim",
        num_cpus=num_cpus,
        # Each site holds one (P, D, D) float64 sum; the pooled one travels back to every site.
        object_store_mb=1024,
    )
