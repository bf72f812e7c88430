"""The ClientApp of the parameter-sharing baselines: its handlers unpack a message, call one of
the local models of `feddymem.federation.baselines.clients` (`GeneratorSharingClient` for
FedAvg / FedProx, `AutoencoderSharingClient` for FedAE), and pack the reply
(`feddymem.federation.baselines.wire`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feddymem.federation import wire
from feddymem.federation.baselines import wire as param_wire
from feddymem.federation.baselines.clients import (
    AutoencoderSharingClient,
    FeatureStatsClient,
    GeneratorSharingClient,
    SharingClient,
)
from feddymem.federation.client_base import (
    MODEL_FILE,
    SiteOf,
    build_site_app,
    client_data,
    identity_record,
)
from feddymem.federation.client_data import ClientData
from feddymem.federation.runconfig import SiteSettings, Value

__all__ = ["app", "build_param_client_app"]


def _open(site: SiteSettings, orders: param_wire.Orders) -> tuple[ClientData, SharingClient, Path]:
    """The client's data, its local model for `orders.method` and its folder for this run."""
    data = client_data(site)
    folder = site.work_dir / data.name / f"{orders.run_name}-{orders.method}-{orders.run_id}"
    client: SharingClient
    if orders.method == "fedae":
        if orders.autoencoder is None:
            raise wire.WireError("a FedAE message must carry the autoencoder's settings")
        client = AutoencoderSharingClient(
            train=data.train,
            test=data.test,
            config=orders.config,
            autoencoder=orders.autoencoder,
            state_dir=folder,
            feature_cache=site.features_dir,
        )
    else:
        client = GeneratorSharingClient(
            train=data.train,
            test=data.test,
            config=orders.config,
            state_dir=folder,
            feature_cache=site.features_dir,
        )
    return data, client, folder


def _arrays(content: RecordDict) -> ArrayRecord:
    if param_wire.ARRAYS not in content or not isinstance(content[param_wire.ARRAYS], ArrayRecord):
        raise wire.WireError(f"message has no '{param_wire.ARRAYS}' ArrayRecord")
    record = content[param_wire.ARRAYS]
    assert isinstance(record, ArrayRecord)
    return record


def _train(message: Message, context: Context, settings: SiteOf) -> Message:
    """Round 0 of FedAE: feature statistics. Otherwise: local training from the global
    weights; reply the new weights and n_k."""
    t0 = time.perf_counter()
    orders = param_wire.orders_from_content(message.content)
    arrays = _arrays(message.content)
    data, client, _ = _open(settings(context), orders)
    if orders.phase == "stats":
        if not isinstance(client, FeatureStatsClient):
            raise wire.WireError(f"phase 'stats' is FedAE's, not {orders.method}'s")
        mean, sq_mean, count = client.feature_stats()
        reply_arrays = param_wire.stats_to_record(mean, sq_mean)
        metrics: dict[str, float] = {param_wire.NUM_EXAMPLES: float(count)}
    else:
        state, metrics = client.fit_local(
            param_wire.state_from_record(arrays),
            round_idx=orders.round_idx,
            proximal_mu=orders.proximal_mu,
        )
        reply_arrays = param_wire.state_to_record(state)
        metrics = {param_wire.NUM_EXAMPLES: float(client.n_images), **metrics}
    metrics["client_s"] = time.perf_counter() - t0
    content = RecordDict(
        {
            param_wire.ARRAYS: reply_arrays,
            wire.METRICS: wire.metrics_to_record(metrics),
            wire.CLIENT: identity_record(data.name),
        }
    )
    return Message(content, reply_to=message)


def _evaluate(message: Message, context: Context, settings: SiteOf) -> Message:
    """Evaluate the final global model on the local test set; reply metrics only."""
    t0 = time.perf_counter()
    orders = param_wire.orders_from_content(message.content)
    state = param_wire.state_from_record(_arrays(message.content))
    data, client, folder = _open(settings(context), orders)
    model_file = folder / MODEL_FILE
    metrics = client.evaluate_local(state, round_idx=orders.round_idx, model_file=model_file)
    values = {**metrics.as_dict(), "n_test": len(data.test), "client_s": time.perf_counter() - t0}
    written = str(model_file) if model_file.is_file() else None
    content = RecordDict(
        {
            wire.CLIENT: identity_record(data.name, written),
            wire.METRICS: wire.metrics_to_record(values),
        }
    )
    return Message(content, reply_to=message)


def build_param_client_app(*, defaults: Mapping[str, Value] | None = None) -> ClientApp:
    """The parameter-sharing ClientApp; run-config values fall back to `defaults`."""
    return build_site_app(
        train=_train, evaluate=_evaluate, defaults=defaults, app="parameter-sharing"
    )


# The app `flwr run` could load for a deployment of the baselines.
app = build_param_client_app()
