"""What fed-padim sends: the orders (server -> site), a site's moments (site -> server) and the
pooled moments (server -> site).

A site's upload is, per grid position j, its image count n, sum_i x_ij (P, D) and
sum_i x_ij x_ij^T (P, D, D) of its training normals' patch features, in float64 so that the
server's sum is exact up to rounding; the server's reply is the same three sums over all sites.
No image, feature of one image or memory item travels, but the mean feature per position is an
average image in feature space (docs/privacy.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from feddymem.config import from_dict, to_dict
from feddymem.detect.gaussian import GaussianConfig, PatchMoments
from feddymem.federation import wire

__all__ = ["MOMENTS", "ORDERS", "Orders", "moments_from_content", "moments_to_record"]

ORDERS = "fedpadim-orders"
MOMENTS = "moments"
_KEYS = ("count", "total", "outer")


@dataclass(frozen=True)
class Orders:
    """The run a message belongs to and the Gaussian config every site uses."""

    run_name: str
    run_id: str
    config: GaussianConfig


def _record(content: RecordDict, key: str, kind: type) -> object:
    if key not in content or not isinstance(content[key], kind):
        raise wire.WireError(f"message has no {kind.__name__} '{key}'")
    return content[key]


def _text(record: ConfigRecord, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise wire.WireError(f"'{ORDERS}.{key}' must be a string, got {type(value).__name__}")
    return value


def _array(record: ArrayRecord, key: str) -> np.ndarray:
    if key not in record:
        raise wire.WireError(f"'{MOMENTS}' has no array '{key}'")
    try:
        return record[key].numpy()
    except (TypeError, ValueError) as err:
        raise wire.WireError(f"array '{MOMENTS}.{key}' cannot be decoded: {err}") from None


def orders_to_record(orders: Orders) -> ConfigRecord:
    return ConfigRecord(
        {
            "run-name": orders.run_name,
            "run-id": orders.run_id,
            "config-json": json.dumps(to_dict(orders.config), sort_keys=True),
        }
    )


def orders_from_content(content: RecordDict) -> Orders:
    record = _record(content, ORDERS, ConfigRecord)
    assert isinstance(record, ConfigRecord)
    raw = _text(record, "config-json")
    try:
        config = from_dict(GaussianConfig, json.loads(raw), where=ORDERS)
    except (ValueError, TypeError) as err:
        raise wire.WireError(f"{ORDERS}: bad Gaussian config ({err})") from None
    return Orders(
        run_name=_text(record, "run-name"),
        run_id=_text(record, "run-id"),
        config=config,
    )


def moments_to_record(moments: PatchMoments, image_hw: tuple[int, int]) -> ArrayRecord:
    """count (1,) int64, total (P, D), outer (P, D, D) float64, grid and input size (2,) int64."""
    assert moments.total is not None and moments.outer is not None and moments.grid_hw
    return ArrayRecord(
        {
            "count": wire.to_array(np.asarray([moments.count], dtype=np.int64)),
            "total": wire.to_array(moments.total.numpy()),
            "outer": wire.to_array(moments.outer.numpy()),
            "grid-hw": wire.to_array(np.asarray(moments.grid_hw, dtype=np.int64)),
            "image-hw": wire.to_array(np.asarray(image_hw, dtype=np.int64)),
        }
    )


def moments_from_content(content: RecordDict) -> tuple[PatchMoments, tuple[int, int]]:
    """The moments and input size of a message; WireError when malformed or not finite."""
    record = _record(content, MOMENTS, ArrayRecord)
    assert isinstance(record, ArrayRecord)
    arrays = {k: _array(record, k) for k in (*_KEYS, "grid-hw", "image-hw")}
    if any(not np.isfinite(arrays[k]).all() for k in ("total", "outer")):
        raise wire.WireError(f"{MOMENTS}: non-finite sums")
    if arrays["grid-hw"].shape != (2,) or arrays["image-hw"].shape != (2,):
        raise wire.WireError(f"{MOMENTS}: grid-hw and image-hw must be 2 integers")
    try:
        moments = PatchMoments.from_sums(
            int(arrays["count"].reshape(-1)[0]),
            torch.from_numpy(np.asarray(arrays["total"], dtype=np.float64)),
            torch.from_numpy(np.asarray(arrays["outer"], dtype=np.float64)),
            (int(arrays["grid-hw"][0]), int(arrays["grid-hw"][1])),
        )
    except (ValueError, IndexError) as err:
        raise wire.WireError(f"{MOMENTS}: {err}") from None
    return moments, (int(arrays["image-hw"][0]), int(arrays["image-hw"][1]))
