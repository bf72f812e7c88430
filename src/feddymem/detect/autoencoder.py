"""Feature-reconstruction autoencoder: the classic reconstruction-error anomaly detector.

A small convolutional autoencoder learns to reconstruct the frozen patch features p(x)
(B, D, H, W) of normal images; a patch scores its squared reconstruction error. Working on
frozen features (not pixels) keeps training to seconds on a CPU and lets the federated
baselines (FedAvg / FedProx) average its weights. `train_autoencoder` is the local training
step those baselines call; `AutoencoderDetector` is the centralised detector and the evaluator
of an already-trained model (`AutoencoderDetector.from_model`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from feddymem.config import ConfigError, FeatureConfig, from_dict
from feddymem.data import Sample
from feddymem.detect.base import Detector
from feddymem.detect.modelfile import (
    ModelFileError,
    calibration_scores_from_state,
    map_floor_from_state,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(FeatureConfig):
    """Reconstruction-error detector on p(x): architecture, training and threshold."""

    hidden: int = 128  # channels of the 1x1 / 3x3 hidden layers
    latent: int = 32  # bottleneck channels
    epochs: int = 10
    train_batch_size: int = 8  # feature maps (images) per optimisation step
    lr: float = 1e-3
    calibration_fraction: float = 0.1  # normal training images held out to set the threshold
    threshold_quantile: float = 0.99
    seed: int = 0  # weight initialisation, batch order and calibration split

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1 or self.latent < 1:
            raise ConfigError(f"hidden and latent must be >= 1, got {self.hidden}, {self.latent}")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.train_batch_size < 1:
            raise ConfigError(f"train_batch_size must be >= 1, got {self.train_batch_size}")
        if not self.lr > 0.0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.calibration_fraction < 0.9:
            raise ConfigError("calibration_fraction must be in [0, 0.9)")
        if not 0.5 <= self.threshold_quantile <= 1.0:
            raise ConfigError("threshold_quantile must be in [0.5, 1]")


# --- model -------------------------------------------------------------------------------------


class FeatureAutoencoder(nn.Module):
    """Convolutional autoencoder of patch features, (B, D, H, W) -> (B, D, H, W).

    Encoder: 1x1 conv D -> hidden, ReLU, 3x3 conv hidden -> latent (the bottleneck). Decoder:
    3x3 conv latent -> hidden, ReLU, 1x1 conv hidden -> D. It works on features standardised
    per channel with training statistics held in buffers (`feature_mean`, `feature_std`, both
    (1, D, 1, 1), and `norm_count`, the number of patch vectors behind them; 0 = not set yet,
    identity standardisation). The buffers are part of `state_dict()`, so FedAvg can average
    them with the weights. Weights are initialised from `seed` alone (no global RNG).
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    norm_count: torch.Tensor

    def __init__(self, in_channels: int, *, hidden: int, latent: int, seed: int) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1 or latent < 1:
            raise ValueError(
                f"in_channels, hidden and latent must be >= 1, got {in_channels}, {hidden}, "
                f"{latent}"
            )
        self.in_channels = in_channels
        self.hidden = hidden
        self.latent = latent
        # skip_init: no default initialisation, which would draw from the global RNG.
        conv = nn.utils.skip_init
        self.encoder = nn.Sequential(
            conv(nn.Conv2d, in_channels, hidden, kernel_size=1),
            nn.ReLU(),
            conv(nn.Conv2d, hidden, latent, kernel_size=3, padding=1),
        )
        self.decoder = nn.Sequential(
            conv(nn.Conv2d, latent, hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            conv(nn.Conv2d, hidden, in_channels, kernel_size=1),
        )
        self.register_buffer("feature_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, in_channels, 1, 1))
        self.register_buffer("norm_count", torch.zeros(()))
        gen = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # PyTorch's default Conv2d initialisation, drawn from `gen`.
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                assert module.bias is not None
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=gen)

    @property
    def is_normalised(self) -> bool:
        """Whether the standardisation statistics were set from training features."""
        return bool(self.norm_count > 0)

    @torch.no_grad()
    def set_normalization(self, features: torch.Tensor) -> None:
        """Per-channel mean and std of training features (N, D, H, W) into the buffers.

        A channel's std is floored at 1% of the mean std, so a channel that is (nearly)
        constant on normal images cannot blow up the error of every test patch.
        """
        self._check_features(features)
        var, mean = torch.var_mean(features.float(), dim=(0, 2, 3))
        std = var.sqrt()
        std = std.clamp_min(max(1e-2 * float(std.mean()), 1e-8))
        self.feature_mean.copy_(mean.view(1, -1, 1, 1))
        self.feature_std.copy_(std.view(1, -1, 1, 1))
        self.norm_count.fill_(features.shape[0] * features.shape[2] * features.shape[3])

    def _check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must be (B, {self.in_channels}, H, W), got {tuple(features.shape)}"
            )

    def _reconstruct_standardised(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p (B, D, H, W) -> (standardised x, its reconstruction), both (B, D, H, W)."""
        self._check_features(p)
        x = (p.float() - self.feature_mean) / self.feature_std
        return x, self.decoder(self.encoder(x))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """Reconstruction of p(x) in feature units, (B, D, H, W) -> (B, D, H, W)."""
        _, recon = self._reconstruct_standardised(p)
        return recon * self.feature_std + self.feature_mean

    def reconstruction_error(self, p: torch.Tensor) -> torch.Tensor:
        """Per-position squared error, mean over the D standardised channels: (B, D, H, W) ->
        (B, H, W). Differentiable (the training loss is its mean)."""
        x, recon = self._reconstruct_standardised(p)
        return (recon - x).square().mean(dim=1)


# --- training ----------------------------------------------------------------------------------


def _reference_parameters(
    model: FeatureAutoencoder, reference: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The reference weights w_ref for every trainable parameter of `model`, detached."""
    out: dict[str, torch.Tensor] = {}
    missing = []
    for name, param in model.named_parameters():
        if name not in reference:
            missing.append(name)
            continue
        ref = reference[name]
        if ref.shape != param.shape:
            raise ValueError(
                f"reference {name!r} is {tuple(ref.shape)}, the model's is {tuple(param.shape)}"
            )
        out[name] = ref.detach().to(param.dtype).clone()
    if missing:
        raise ValueError(f"reference lacks parameter(s) {missing}")
    return out


def mean_reconstruction_error(
    model: FeatureAutoencoder, features: torch.Tensor, *, batch_size: int
) -> float:
    """Mean of `reconstruction_error` over features (N, D, H, W), without training."""
    if features.shape[0] < 1:
        raise ValueError("features hold no image")
    total = 0.0
    with torch.no_grad():
        for start in range(0, features.shape[0], batch_size):
            chunk = features[start : start + batch_size]
            total += float(model.reconstruction_error(chunk).mean()) * chunk.shape[0]
    return total / features.shape[0]


def train_autoencoder(
    model: FeatureAutoencoder,
    features: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
    reference: dict[str, torch.Tensor] | None = None,
) -> float:
    """Train `model` in place to reconstruct features (N, D, H, W) of normal images.

    Adam (fresh state each call) on the mean squared error of standardised features; batches of
    `batch_size` feature maps in an order drawn from `seed`. If the model has no standardisation
    statistics yet they are set from `features` first; otherwise they are kept (a FedAvg round
    keeps the global ones). FedProx: with `proximal_mu` > 0 the objective adds
    mu / 2 * ||w - w_ref||^2 over the trainable parameters, w_ref = `reference[name]` (a
    `state_dict()` of the global model will do).

    Returns the mean reconstruction loss (without the proximal term) of the last epoch, or of the
    untouched model when `epochs` is 0.
    """
    if features.ndim != 4 or features.shape[1] != model.in_channels or features.shape[0] < 1:
        raise ValueError(
            f"features must be (N >= 1, {model.in_channels}, H, W), got {tuple(features.shape)}"
        )
    if epochs < 0 or batch_size < 1 or not lr > 0.0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    if proximal_mu < 0.0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    if proximal_mu > 0.0 and reference is None:
        raise ValueError("proximal_mu > 0 needs the reference (global) weights")
    ref = _reference_parameters(model, reference) if reference is not None else None
    if not model.is_normalised:
        model.set_normalization(features)
    if epochs == 0:
        return mean_reconstruction_error(model, features, batch_size=batch_size)

    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    params = dict(model.named_parameters())
    n = features.shape[0]
    last = math.nan
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            # Indexing copies: features made under inference mode become ordinary tensors.
            loss = model.reconstruction_error(features[idx]).mean()
            objective = loss
            if ref is not None and proximal_mu > 0.0:
                prox = sum((params[k] - w).square().sum() for k, w in ref.items())
                objective = loss + 0.5 * proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        last = total / n
        log.debug("autoencoder epoch %d/%d: loss %.5f", epoch + 1, epochs, last)
    model.eval()
    return last


# --- detector ----------------------------------------------------------------------------------


class AutoencoderDetector(Detector):
    """Reconstruction-error detector: anomaly map = upsampled, blurred per-patch error.

    Fitted state: `model_` (a `FeatureAutoencoder` in eval mode), `image_hw_` (H_in, W_in),
    `threshold_`, `train_loss_` (last-epoch loss, None for a model built elsewhere),
    `n_train_` (training images, None likewise).
    """

    kind = "autoencoder"
    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, *, weights: Path | None = None) -> None:
        super().__init__(config, weights=weights)
        self.model_: FeatureAutoencoder | None = None
        self.train_loss_: float | None = None
        self.n_train_: int | None = None

    @classmethod
    def from_model(
        cls,
        model: FeatureAutoencoder,
        *,
        image_hw: tuple[int, int],
        config: FeatureConfig | None = None,
        weights: Path | None = None,
        threshold: float | None = None,
    ) -> AutoencoderDetector:
        """A detector around an already-trained model (e.g. FedAvg's global model).

        `image_hw` is the input size the model's training features were extracted at. The
        backbone, image-score and blur settings come from `config` (any `FeatureConfig`; an
        `AutoencoderConfig` keeps its other fields too); `hidden` and `latent` are set from the
        model. The model is copied, so training it further does not change the detector. Set
        the threshold here or with `calibrate`.
        """
        if not model.is_normalised:
            raise ValueError(
                "the model has no standardisation statistics: train it (train_autoencoder) or "
                "call set_normalization first"
            )
        base = config if config is not None else FeatureConfig()
        fields = (
            dataclasses.fields(AutoencoderConfig)
            if isinstance(base, AutoencoderConfig)
            else dataclasses.fields(FeatureConfig)
        )
        values = {f.name: getattr(base, f.name) for f in fields}
        values.update(hidden=model.hidden, latent=model.latent)
        det = cls(AutoencoderConfig(**values), weights=weights)
        if det.extractor.out_channels != model.in_channels:
            raise ValueError(
                f"the model takes {model.in_channels} channels but backbone "
                f"{det.config.backbone!r} gives {det.extractor.out_channels}"
            )
        det.model_ = copy.deepcopy(model).eval()
        det.image_hw_ = (int(image_hw[0]), int(image_hw[1]))
        det.threshold_ = threshold
        return det

    def _is_fitted(self) -> bool:
        return self.model_ is not None

    def fit(
        self, samples: Sequence[Sample], *, progress: Callable[[int], None] | None = None
    ) -> AutoencoderDetector:
        """Extract p(x) of normal samples once, train the autoencoder on it, set the threshold."""
        cfg = self.config
        train, calib, image_hw = self._fit_split(
            samples, fraction=cfg.calibration_fraction, seed=cfg.seed
        )
        feats = torch.cat(list(self._train_features(train, image_hw=image_hw, progress=progress)))
        model = FeatureAutoencoder(
            feats.shape[1], hidden=cfg.hidden, latent=cfg.latent, seed=cfg.seed
        )
        self.train_loss_ = train_autoencoder(
            model,
            feats,
            epochs=cfg.epochs,
            batch_size=cfg.train_batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
        )
        log.info(
            "autoencoder: %d images, %d epochs, last loss %.4f",
            feats.shape[0],
            cfg.epochs,
            self.train_loss_,
        )
        self.n_train_ = int(feats.shape[0])
        del feats
        self.model_ = model.eval()
        self.image_hw_ = image_hw
        self._set_threshold(train, calib, quantile=cfg.threshold_quantile)
        return self

    def score_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in), already checked -> patch scores (B, H, W)."""
        assert self.model_ is not None
        feats = self.extractor(images)
        with torch.inference_mode():
            scores = self.model_.reconstruction_error(feats)
        return scores

    # --- persistence -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        assert self.model_ is not None and self.image_hw_ is not None
        return {
            "in_channels": self.model_.in_channels,
            "model": {k: v.detach().clone() for k, v in self.model_.state_dict().items()},
            "train_loss": self.train_loss_,
            "n_train": self.n_train_,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, weights: Path | None = None, where: str = "state"
    ) -> AutoencoderDetector:
        """Rebuild a detector from `state()` (what `load_detector` calls for 'autoencoder')."""
        try:
            config = from_dict(AutoencoderConfig, json.loads(state["config"]), where=where)
            model = FeatureAutoencoder(
                int(state["in_channels"]), hidden=config.hidden, latent=config.latent, seed=0
            )
            model.load_state_dict(state["model"])
            image_hw = (int(state["image_hw"][0]), int(state["image_hw"][1]))
            threshold, loss, n_train = state["threshold"], state["train_loss"], state["n_train"]
        except (KeyError, TypeError, IndexError, RuntimeError, ValueError) as err:
            raise ModelFileError(f"{where}: not a valid autoencoder model ({err!r})") from err
        det = cls(config, weights=weights)
        det.model_ = model.eval()
        det.image_hw_ = image_hw
        det.threshold_ = None if threshold is None else float(threshold)
        det.map_floor_ = map_floor_from_state(state, where=where)
        det.calibration_scores_ = calibration_scores_from_state(state, where=where)
        det.train_loss_ = None if loss is None else float(loss)
        det.n_train_ = None if n_train is None else int(n_train)
        return det
