"""What the parameter-sharing ServerApp reads from its run config, and what it makes of it:
the strategy (Flower's FedAvg / FedProx), the feature channels D and FedAE's autoencoder
settings."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedProx

from feddymem.config import FeatureConfig, FedDyMemConfig
from feddymem.detect.autoencoder import AutoencoderConfig
from feddymem.detect.backbones import BackboneError, get_backbone
from feddymem.federation.baselines import wire as param_wire
from feddymem.federation.baselines.wire import Method
from feddymem.federation.runconfig import OUT, SPEC, RunConfigError, Value

__all__ = [
    "DEFAULT_PROXIMAL_MU",
    "LOCAL_EPOCHS",
    "METHOD",
    "PROXIMAL_MU",
    "ROUNDS",
    "ParamSettings",
    "autoencoder_config",
    "feature_channels",
    "make_strategy",
    "param_settings",
]

# run-config keys (next to runconfig's `spec` / `out`)
METHOD = "method"
ROUNDS = "rounds"
LOCAL_EPOCHS = "local-epochs"
PROXIMAL_MU = "proximal-mu"
# FedProx's mu, weighed against the unscaled metric loss (the client divides the proximal term by
# nu like the loss). The FedProx paper's grid (0.001-1) assumes SGD; our clients train G with
# Adam, whose steps are about lr whatever the gradient's scale, so G's weights move little in a
# round and a small mu barely pulls on them. 1000 is the smallest power of ten at which the term
# measurably holds G back (by 3% or more in tests/federation/test_baselines.py's drift test); chosen
# that way, not on AUROC.
DEFAULT_PROXIMAL_MU = 1000.0


@dataclass(frozen=True, kw_only=True)
class ParamSettings:
    """What the parameter-sharing ServerApp reads from the run config.

    Attributes:
        spec: the federation spec TOML.
        out: the output folder (results.json, global_model.pt).
        method: ``fedavg``, ``fedprox`` or ``fedae``.
        rounds: R, or None for the spec's ``[federation] rounds``.
        local_epochs: E, or None for the spec's ``[model] local_epochs``.
        proximal_mu: FedProx's mu (ignored by the others).
    """

    spec: Path
    out: Path
    method: Method
    rounds: int | None = None
    local_epochs: int | None = None
    proximal_mu: float = DEFAULT_PROXIMAL_MU


def param_settings(
    run_config: Mapping[str, Value], *, defaults: Mapping[str, Value]
) -> ParamSettings:
    """Resolve the server's settings (run config first, then `defaults`); -1 = from the spec."""
    values = {**defaults, **{k: v for k, v in run_config.items() if v != ""}}

    def path(key: str) -> Path:
        value = values.get(key, "")
        if not isinstance(value, str) or not value:
            raise RunConfigError(f"run config: '{key}' must be set to a path (got {value!r})")
        return Path(value).expanduser().resolve()

    def optional_int(key: str) -> int | None:
        value = values.get(key, -1)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RunConfigError(f"run config: '{key}' must be an integer, got {value!r}")
        return None if value < 0 else value

    method = values.get(METHOD, "")
    if method not in param_wire.METHODS:
        raise RunConfigError(f"run config: '{METHOD}' must be one of {list(param_wire.METHODS)}")
    mu = values.get(PROXIMAL_MU, DEFAULT_PROXIMAL_MU)
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not (math.isfinite(mu)):
        raise RunConfigError(f"run config: '{PROXIMAL_MU}' must be a number, got {mu!r}")
    if mu < 0:
        raise RunConfigError(f"run config: '{PROXIMAL_MU}' must be >= 0, got {mu}")
    return ParamSettings(
        spec=path(SPEC),
        out=path(OUT),
        method=method,  # checked against METHODS above
        rounds=optional_int(ROUNDS),
        local_epochs=optional_int(LOCAL_EPOCHS),
        proximal_mu=float(mu),
    )


def make_strategy(method: Method, *, proximal_mu: float, min_clients: int) -> FedAvg:
    """Flower's FedProx for ``fedprox``, FedAvg otherwise; every client takes part each round."""
    options: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_clients,
        "min_evaluate_nodes": min_clients,
        "min_available_nodes": min_clients,
        "weighted_by_key": param_wire.NUM_EXAMPLES,
        "arrayrecord_key": param_wire.ARRAYS,
        "configrecord_key": param_wire.CONFIG,
    }
    if method == "fedprox":
        return FedProx(proximal_mu=proximal_mu, **options)
    return FedAvg(**options)


def feature_channels(config: FeatureConfig) -> int:
    """D, the channels of p(x) for `config`'s backbone and taps (no weights are loaded)."""
    spec = get_backbone(config.backbone)
    layers = tuple(config.layers) if config.layers else spec.default_layers
    unknown = [layer for layer in layers if layer not in spec.taps]
    if unknown:
        raise BackboneError(f"{config.backbone} has no tap(s) {unknown}; taps: {sorted(spec.taps)}")
    return sum(spec.taps[layer].channels for layer in layers)


def autoencoder_config(model: FedDyMemConfig) -> AutoencoderConfig:
    """FedAE's settings: the spec's feature settings (backbone, taps, size, image score, blur),
    its seed, local epochs (per round) and training batch size; the autoencoder's own defaults
    for the architecture, learning rate and threshold."""
    features = {f.name: getattr(model, f.name) for f in dataclasses.fields(FeatureConfig)}
    return AutoencoderConfig(
        **features,
        epochs=model.local_epochs,
        train_batch_size=model.train_batch_size,
        seed=model.seed,
    )
