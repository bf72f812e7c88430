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
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from feddymem.detect.dataset_scores import site_threshold_metrics
from feddymem.detect.gaussian import GaussianDetector
from feddymem.federation import wire
from feddymem.federation.client_base import (
    MODEL_FILE,
    SiteOf,
    build_site_app,
    client_data,
    client_noise_key,
    identity_record,
)
from feddymem.federation.fedpadim import wire as padim_wire
from feddymem.federation.runconfig import SiteSettings, Value

__all__ = ["SCORES_FILE", "build_fedpadim_client_app"]

SCORES_FILE = "test_scores.npz"


def _folder(site: SiteSettings, name: str, orders: padim_wire.Orders) -> Path:
    return site.work_dir / name / f"{orders.run_name}-fed-padim-{orders.run_id}"


def _train(message: Message, context: Context, settings: SiteOf) -> Message:
    """Reply the moments of this site's training normals."""
    t0 = time.perf_counter()
    orders = padim_wire.orders_from_content(message.content)
    site = settings(context)
    data = client_data(site)
    split = GaussianDetector(orders.config).local_moments(
        list(data.train), noise_key=client_noise_key(site, _folder(site, data.name, orders))
    )
    metrics = {"num-examples": split.moments.count, "client_s": time.perf_counter() - t0}
    content = RecordDict(
        {
            padim_wire.MOMENTS: padim_wire.moments_to_record(split.moments, split.image_hw),
            wire.METRICS: wire.metrics_to_record(metrics),
            wire.CLIENT: identity_record(data.name),
        }
    )
    return Message(content, reply_to=message)


def _evaluate(message: Message, context: Context, settings: SiteOf) -> Message:
    """Fit on the pooled moments, evaluate on the own test split (and at the site's own
    threshold); reply metrics only."""
    t0 = time.perf_counter()
    site = settings(context)
    orders = padim_wire.orders_from_content(message.content)
    pooled, image_hw = padim_wire.moments_from_content(message.content)
    data = client_data(site)
    det = GaussianDetector(orders.config).fit_pooled(list(data.train), pooled, image_hw=image_hw)
    metrics, scores = det.evaluate_with_scores(list(data.test))
    folder = _folder(site, data.name, orders)
    folder.mkdir(parents=True, exist_ok=True)
    det.save(folder / MODEL_FILE)
    np.savez(folder / SCORES_FILE, labels=scores.labels, image_scores=scores.image_scores)
    at_threshold = site_threshold_metrics(
        det,
        scores,
        calibration_normals=len(
            det.calibration_scores_ if det.calibration_scores_ is not None else []
        ),
        calibration_folds=det.calibration_folds_,
        calibration_shift=det.calibration_shift_,
    )
    values = {
        **metrics.as_dict(),
        **at_threshold,
        "n_test": len(data.test),
        "client_s": time.perf_counter() - t0,
    }
    content = RecordDict(
        {
            wire.CLIENT: identity_record(data.name, str(folder / MODEL_FILE)),
            wire.METRICS: wire.metrics_to_record(values),
        }
    )
    return Message(content, reply_to=message)


def build_fedpadim_client_app(*, defaults: Mapping[str, Value] | None = None) -> ClientApp:
    """The fed-padim ClientApp; run-config values fall back to `defaults`."""
    return build_site_app(train=_train, evaluate=_evaluate, defaults=defaults)
