"""fed-padim's ClientApp: send this site's moments, then fit and evaluate on the pooled ones.

``train``     the Gaussian moments of the site's training normals (its calibration share held
              out), with the input size it resolved; nothing else.
``evaluate``  the pooled moments from the server -> per-position Gaussians (Cholesky
              precisions), the threshold from the site's held-out normals, metrics on the site's
              own test split; the model file and per-image scores stay at the site.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feddymem.allocator import keep_freed_memory
from feddymem.federation import wire
from feddymem.federation.client_app import MODEL_FILE, client_data, client_name, guarded
from feddymem.federation.fedpadim import wire as padim_wire
from feddymem.federation.runconfig import SiteSettings, Value, site_settings

__all__ = ["SCORES_FILE", "build_fedpadim_client_app"]

SCORES_FILE = "test_scores.npz"


def _folder(site: SiteSettings, name: str, orders: padim_wire.Orders) -> Path:
    return site.work_dir / name / f"{orders.run_name}-fed-padim-{orders.run_id}"


def build_fedpadim_client_app(*, defaults: Mapping[str, Value] | None = None) -> ClientApp:
    """The fed-padim ClientApp; run-config values fall back to `defaults`."""
    from feddymem.detect.gaussian import GaussianDetector

    fallback: dict[str, Value] = dict(defaults or {})
    keep_freed_memory()
    app = ClientApp()

    def settings(context: Context) -> SiteSettings:
        return site_settings(context.node_config, context.run_config, defaults=fallback)

    def identity(name: str, model_file: str | None = None) -> ConfigRecord:
        return wire.identity_to_record(wire.ClientIdentity(name=name, model_file=model_file))

    @app.query()
    @guarded
    def identify(message: Message, context: Context) -> Message:
        """Reply this client's name."""
        name = client_name(settings(context))
        return Message(RecordDict({wire.CLIENT: identity(name)}), reply_to=message)

    @app.train()
    @guarded
    def train(message: Message, context: Context) -> Message:
        """Reply the moments of this site's training normals."""
        t0 = time.perf_counter()
        orders = padim_wire.orders_from_content(message.content)
        data = client_data(settings(context))
        split = GaussianDetector(orders.config).local_moments(list(data.train))
        metrics = {"num-examples": split.moments.count, "client_s": time.perf_counter() - t0}
        content = RecordDict(
            {
                padim_wire.MOMENTS: padim_wire.moments_to_record(split.moments, split.image_hw),
                wire.METRICS: wire.metrics_to_record(metrics),
                wire.CLIENT: identity(data.name),
            }
        )
        return Message(content, reply_to=message)

    @app.evaluate()
    @guarded
    def evaluate(message: Message, context: Context) -> Message:
        """Fit on the pooled moments, evaluate on the own test split; reply metrics only."""
        t0 = time.perf_counter()
        site = settings(context)
        orders = padim_wire.orders_from_content(message.content)
        pooled, image_hw = padim_wire.moments_from_content(message.content)
        data = client_data(site)
        det = GaussianDetector(orders.config).fit_pooled(
            list(data.train), pooled, image_hw=image_hw
        )
        metrics, scores = det.evaluate_with_scores(list(data.test))
        folder = _folder(site, data.name, orders)
        folder.mkdir(parents=True, exist_ok=True)
        det.save(folder / MODEL_FILE)
        np.savez(folder / SCORES_FILE, labels=scores.labels, image_scores=scores.image_scores)
        values = {
            **metrics.as_dict(),
            "n_test": len(data.test),
            "client_s": time.perf_counter() - t0,
        }
        content = RecordDict(
            {
                wire.CLIENT: identity(data.name, str(folder / MODEL_FILE)),
                wire.METRICS: wire.metrics_to_record(values),
            }
        )
        return Message(content, reply_to=message)

    return app
