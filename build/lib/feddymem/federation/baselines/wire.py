"""The wire format of the parameter-sharing baselines (FedAvg / FedProx of G_k, FedAE).

These baselines use Flower's own Message-API strategies, so their messages follow the
strategies' layout (`flwr.serverapp.strategy.FedAvg`): one ArrayRecord and one MetricRecord per
reply, weighted by ``num-examples``. What crosses the wire, and nothing else:

server -> client (``train`` / ``evaluate``)
    ``arrays``  ArrayRecord: the global model's state (G's ``conv.weight`` / ``conv.bias``, or the
                autoencoder's parameters and normalisation buffers); empty in FedAE's round 0
    ``config``  ConfigRecord: ``server-round`` (and ``proximal-mu``, FedProx) set by the
                strategy, plus the method, the phase, R, the run name / id and the model
                settings as JSON
client -> server (``train`` reply)
    ``arrays``  ArrayRecord: the client's model state after local training, or, in FedAE's
                round 0 (phase ``stats``), the per-channel mean and mean square of its patch
                features, (D,) each
    ``metrics`` MetricRecord: ``num-examples`` (n_k, or n_k * H * W patch vectors for the
                statistics) and scalar training metrics (always the same keys: Flower's
                strategy refuses replies whose metric keys differ)
    ``client``  ConfigRecord: the client's name
client -> server (``evaluate`` reply)
    ``client``, ``metrics`` (image AUROC, F1-max, pixel AUROC / AUPRO where masks exist, n_test)

No image, feature map or memory bank has a key here: a local memory M_k never leaves its client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from feddymem.config import FedDyMemConfig
from feddymem.federation import wire

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METHODS",
    "NUM_EXAMPLES",
    "PHASES",
    "STATS_KEYS",
    "STAT_MEAN",
    "STAT_SQ_MEAN",
    "Method",
    "Orders",
    "Phase",
    "UpdateRejected",
    "check_update",
    "orders_from_content",
    "orders_to_record",
    "state_from_record",
    "state_to_record",
    "stats_from_record",
    "stats_to_record",
]

Method = Literal["fedavg", "fedprox", "fedae"]
Phase = Literal["stats", "train", "evaluate"]
METHODS: tuple[Method, ...] = get_args(Method)
PHASES: tuple[Phase, ...] = get_args(Phase)

# --- record keys (RecordDict level): the strategy's defaults, so FedAvg builds the messages ---
ARRAYS = "arrays"
CONFIG = "config"
# --- keys inside records ---
NUM_EXAMPLES = "num-examples"  # FedAvg's `weighted_by_key`
SERVER_ROUND = "server-round"  # written by FedAvg.configure_train
PROXIMAL_MU = "proximal-mu"  # written by FedProx.configure_train
_METHOD = "method"
_PHASE = "phase"
_NUM_ROUNDS = "num-rounds"
_RUN_NAME = "run-name"
_RUN_ID = "run-id"
_AE_JSON = "autoencoder-config-json"
STAT_MEAN = "feature-mean"
STAT_SQ_MEAN = "feature-sq-mean"
STATS_KEYS = frozenset({STAT_MEAN, STAT_SQ_MEAN})


class UpdateRejected(ValueError):
    """A client's update fails validation; the message says why (for the server's log)."""


@dataclass(frozen=True, kw_only=True)
class Orders:
    """What the server asks in one message.

    Attributes:
        method: ``fedavg``, ``fedprox`` or ``fedae``.
        phase: ``stats`` (FedAE round 0), ``train`` or ``evaluate``.
        round_idx: the server round t (0 for statistics, 1..R for training).
        num_rounds: R.
        run_name / run_id: the run (clients keep their files per run).
        proximal_mu: FedProx's mu (0 for FedAvg / FedAE).
        config: the FedDyMemConfig of the spec (features, G_k, loss, local epochs, seed).
        autoencoder: the autoencoder's settings as a plain dict (FedAE only).
    """

    method: Method
    phase: Phase
    round_idx: int
    num_rounds: int
    run_name: str
    run_id: str
    proximal_mu: float
    config: FedDyMemConfig
    autoencoder: dict[str, Any] | None = None


def orders_to_record(orders: Orders) -> ConfigRecord:
    """The orders as the ``config`` ConfigRecord (the strategy adds ``server-round`` itself,
    and ``proximal-mu`` for FedProx; both are also set here so a record is complete alone)."""
    record = wire.config_to_record(orders.config)
    record[_METHOD] = orders.method
    record[_PHASE] = orders.phase
    record[SERVER_ROUND] = int(orders.round_idx)
    record[_NUM_ROUNDS] = int(orders.num_rounds)
    record[_RUN_NAME] = orders.run_name
    record[_RUN_ID] = orders.run_id
    if orders.method == "fedprox":
        record[PROXIMAL_MU] = float(orders.proximal_mu)
    if orders.autoencoder is not None:
        record[_AE_JSON] = json.dumps(orders.autoencoder, sort_keys=True)
    return record


def _get(record: ConfigRecord, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in record:
        raise wire.WireError(f"record '{CONFIG}' has no key '{key}'")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise wire.WireError(f"'{CONFIG}.{key}' has type {type(value).__name__}")
    return value


def orders_from_content(content: RecordDict) -> Orders:
    """Read the ``config`` record of a server message."""
    if CONFIG not in content or not isinstance(content[CONFIG], ConfigRecord):
        raise wire.WireError(f"message has no '{CONFIG}' ConfigRecord")
    record = content[CONFIG]
    assert isinstance(record, ConfigRecord)
    method = _get(record, _METHOD, str)
    if method not in METHODS:
        raise wire.WireError(f"unknown method {method!r}; known: {list(METHODS)}")
    phase = _get(record, _PHASE, str)
    if phase not in PHASES:
        raise wire.WireError(f"unknown phase {phase!r}; known: {list(PHASES)}")
    mu = float(_get(record, PROXIMAL_MU, (int, float))) if PROXIMAL_MU in record else 0.0
    if not math.isfinite(mu) or mu < 0:
        raise wire.WireError(f"'{CONFIG}.{PROXIMAL_MU}' must be finite and >= 0, got {mu}")
    autoencoder: dict[str, Any] | None = None
    if _AE_JSON in record:
        values = json.loads(_get(record, _AE_JSON, str))
        if not isinstance(values, dict):
            raise wire.WireError(f"'{CONFIG}.{_AE_JSON}' is not a JSON object")
        autoencoder = values
    return Orders(
        method=method,
        phase=phase,
        round_idx=_get(record, SERVER_ROUND, int),
        num_rounds=_get(record, _NUM_ROUNDS, int),
        run_name=_get(record, _RUN_NAME, str),
        run_id=_get(record, _RUN_ID, str),
        proximal_mu=mu,
        config=wire.config_from_record(record),
        autoencoder=autoencoder,
    )


# ----------------------------------------------------------------------------------------------
# model state and feature statistics


def state_to_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A model's state dict (parameters and buffers) as an ArrayRecord, float32."""
    return ArrayRecord(
        {
            key: wire.to_array(value.detach().to("cpu", torch.float32).numpy())
            for key, value in state.items()
        }
    )


def state_from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord as a state dict of tensors (exactly as sent; no coercion)."""
    try:
        return {key: torch.from_numpy(record[key].numpy().copy()) for key in record}
    except (TypeError, ValueError) as err:
        raise wire.WireError(f"record '{ARRAYS}' cannot be decoded: {err}") from None


def stats_to_record(mean: torch.Tensor, sq_mean: torch.Tensor) -> ArrayRecord:
    """Per-channel mean and mean square of a client's patch features, (D,) float64 each."""
    return ArrayRecord(
        {
            STAT_MEAN: wire.to_array(mean.detach().to("cpu", torch.float64).numpy()),
            STAT_SQ_MEAN: wire.to_array(sq_mean.detach().to("cpu", torch.float64).numpy()),
        }
    )


def stats_from_record(record: ArrayRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) from an aggregated statistics record; variance clamped at 0."""
    state = state_from_record(record)
    missing = sorted(STATS_KEYS - set(state))
    if missing:
        raise wire.WireError(f"statistics record lacks {missing}")
    mean = state[STAT_MEAN].double()
    var = (state[STAT_SQ_MEAN].double() - mean.pow(2)).clamp_min(0.0)
    return mean, var


def check_update(
    record: ArrayRecord, expected: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]
) -> None:
    """Check a client's ArrayRecord before it may enter the average.

    It must hold exactly the `expected` keys (name -> (shape, dtype)), each with that shape and
    dtype and only finite values. Raises UpdateRejected naming the first failed check.
    """
    keys = set(record.keys())
    if keys != set(expected):
        extra, missing = sorted(keys - set(expected)), sorted(set(expected) - keys)
        raise UpdateRejected(
            f"arrays do not match the model: unexpected {extra}, missing {missing}"
        )
    for key, (shape, dtype) in expected.items():
        try:
            array = record[key].numpy()
        except (TypeError, ValueError) as err:
            raise UpdateRejected(f"array '{key}' cannot be decoded: {err}") from None
        if tuple(array.shape) != tuple(shape):
            raise UpdateRejected(f"array '{key}' has shape {array.shape}, expected {shape}")
        if array.dtype != dtype:
            raise UpdateRejected(f"array '{key}' has dtype {array.dtype}, expected {dtype}")
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise UpdateRejected(f"array '{key}' holds NaN or Inf ({bad} of {array.size} values)")
