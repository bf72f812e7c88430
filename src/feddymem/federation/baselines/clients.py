"""The local models of the parameter-sharing baselines, plain PyTorch (no Flower):

`GeneratorSharingClient`  FedAvg / FedProx over the memory generator G's weights, with a local
    memory: each round the client loads the global G, builds its own M_k from its own features
    with it (the same memory-reduce as FedDyMem), trains G for E local epochs with the metric
    loss against M_k (FedProx: + mu/2 ||w - w_global||^2) and returns G's weights. M_k never
    leaves the client; at the end it is rebuilt with the final global G for evaluation.
`AutoencoderSharingClient`  FedAE: a feature autoencoder trained with FedAvg; anomaly score =
    reconstruction error. In round 0 it reports the per-channel mean and mean square of its
    patch features so the server can pool them into the normalisation every client shares.

Both are stateless between messages apart from the cached patch features: every message brings
the global weights, and the local optimiser starts afresh each round (as in Flower's examples
and the FedProx paper's clients). The ClientApp (`feddymem.federation.baselines.client_app`)
unpacks a message, calls one of these, and packs the reply.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from feddymem.config import FedDyMemConfig, from_dict
from feddymem.data import Sample
from feddymem.detect.autoencoder import (
    AutoencoderConfig,
    AutoencoderDetector,
    FeatureAutoencoder,
    train_autoencoder,
)
from feddymem.method.client import SCORES_FILE, FedDyMemClient
from feddymem.method.generator import MemoryGenerator, train_generator
from feddymem.method.seeds import round_seed
from feddymem.metrics import DetectionMetrics

__all__ = [
    "AutoencoderSharingClient",
    "FeatureStatsClient",
    "GeneratorSharingClient",
    "SharingClient",
    "proximal_term",
]

State = dict[str, torch.Tensor]


class SharingClient(Protocol):
    """What the ClientApp needs of a parameter-sharing client."""

    @property
    def n_images(self) -> int:
        """n_k, the weight of this client's update in the average."""
        ...

    def fit_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, proximal_mu: float
    ) -> tuple[State, dict[str, float]]:
        """Load the global state, train locally, return the new state and training metrics."""
        ...

    def evaluate_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, model_file: Path | None
    ) -> DetectionMetrics:
        """Evaluate the final global model on the local test set."""
        ...


@runtime_checkable
class FeatureStatsClient(Protocol):
    """A client that can report its feature statistics (FedAE's round 0)."""

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-channel mean and mean square of its patch features, (D,) each, and their count."""
        ...


def proximal_term(module: torch.nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """||w - w_global||^2 over the trainable parameters of `module` (FedProx)."""
    total = torch.zeros(())
    for name, param in module.named_parameters():
        if param.requires_grad:
            total = total + (param - reference[name]).pow(2).sum()
    return total


# ----------------------------------------------------------------------------------------------
# FedAvg / FedProx over G, local memory


class GeneratorSharingClient(FedDyMemClient):
    """Client k of FedAvg / FedProx over G's weights with a local memory M_k (method.md,
    "Parameter sharing"). Same features, generator, metric loss and memory-reduce as FedDyMem;
    only what is shared differs: G's weights instead of M_k."""

    @classmethod
    def check_config(cls, config: FedDyMemConfig) -> None:
        if not config.generator:
            raise ValueError("FedAvg / FedProx share the generator's weights: set generator = true")

    @property
    def gen(self) -> MemoryGenerator:
        """G_k (always present here)."""
        assert self.generator is not None
        return self.generator

    @property
    def n_images(self) -> int:
        """n_k: the training images (calibration images held out)."""
        return len(self.train_samples)

    def model_state(self) -> State:
        """G_k's state dict, detached copies."""
        return {k: v.detach().clone() for k, v in self.gen.state_dict().items()}

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Install the global G (strict: keys and shapes must match this client's G)."""
        self.gen.load_state_dict(dict(state), strict=True)

    def _train_local(
        self,
        memory: torch.Tensor,
        *,
        round_idx: int,
        proximal_mu: float,
        reference: Mapping[str, torch.Tensor],
    ) -> dict[str, float]:
        """E local epochs of metric loss against M_k (+ mu/2 ||w - w_global||^2 / nu)."""
        cfg = self.config
        optimizer = torch.optim.AdamW(
            self.gen.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True
        )
        # The metric loss is (L_att + L_rep) / nu; the proximal term gets the same 1/nu so that
        # mu weighs it against the unscaled loss, as in the FedProx paper. FedAvg (mu = 0)
        # skips it.
        metrics = train_generator(
            self.gen,
            self.features(),
            memory,
            self.loss,
            optimizer,
            epochs=cfg.local_epochs,
            batch_size=cfg.train_batch_size,
            seed=round_seed(cfg.seed, round_idx),
            extra=(lambda: proximal_term(self.gen, reference)) if proximal_mu > 0 else None,
            extra_weight=0.5 * proximal_mu / self.loss.nu,
        )
        metrics["loss_prox"] = metrics.pop("loss_extra", 0.0)  # reported for FedAvg too
        return metrics

    def fit_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, proximal_mu: float
    ) -> tuple[State, dict[str, float]]:
        """Round t: load the global G, build M_k with it, train G against M_k, return G."""
        self.load_model_state(global_state)
        reference = {k: v.detach().clone() for k, v in self.gen.named_parameters()}
        t0 = time.perf_counter()
        self.features()  # extracted once, then cached
        metrics = {"features_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        memory = self._build_memory(round_idx=round_idx)
        metrics["reduce_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if self.config.metric_loss and self.config.local_epochs > 0:
            metrics.update(
                self._train_local(
                    memory.vectors,
                    round_idx=round_idx,
                    proximal_mu=proximal_mu,
                    reference=reference,
                )
            )
        else:  # the ablation switch: G is never trained
            metrics.update(loss=0.0, loss_att=0.0, loss_rep=0.0, loss_prox=0.0)
        metrics["train_s"] = time.perf_counter() - t1
        metrics["memory_items"] = float(memory.vectors.shape[0])
        return self.model_state(), metrics

    def evaluate_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, model_file: Path | None
    ) -> DetectionMetrics:
        """The final global G, M_k rebuilt with it; metrics on the local test set. The detector
        (G, M_k, threshold) is written to `model_file` when given; it stays at the site."""
        self.load_model_state(global_state)
        memory = self._build_memory(round_idx=round_idx).vectors
        metrics = self.evaluate(memory)
        if model_file is not None:
            self.export(memory, model_file)
        return metrics


# ----------------------------------------------------------------------------------------------
# FedAE: a feature autoencoder trained with FedAvg


class AutoencoderSharingClient:
    """Client k of FedAE: a `FeatureAutoencoder` on its patch features p(x), trained from the
    global weights each round; anomaly score = reconstruction error (`AutoencoderDetector`).

    Features, the calibration split and the input size come from a `FedDyMemClient` on the same
    data and feature settings (so the feature cache is shared with every other method).
    """

    def __init__(
        self,
        *,
        train: Sequence[Sample],
        test: Sequence[Sample],
        config: FedDyMemConfig,
        autoencoder: Mapping[str, Any],
        state_dir: Path,
        feature_cache: Path | None = None,
    ) -> None:
        self.config = from_dict(
            AutoencoderConfig, dict(autoencoder), where="autoencoder settings from the server"
        )
        # Only the features are used: no generator to build.
        self.features_client = FedDyMemClient(
            train=train,
            test=test,
            config=dataclasses.replace(config, generator=False),
            state_dir=state_dir,
            calibration_fraction=self.config.calibration_fraction,
            feature_cache=feature_cache,
        )
        self.state_dir = self.features_client.state_dir
        self.test = self.features_client.test
        self.dim = self.features_client.detector.extractor.out_channels

    @property
    def n_images(self) -> int:
        """n_k: the training images (calibration images held out)."""
        return len(self.features_client.train_samples)

    def features(self) -> torch.Tensor:
        """p(x) of the training images, (n_k, D, H, W) float16 (cached)."""
        return self.features_client.features()

    @torch.no_grad()
    def feature_stats(self, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-channel mean and mean square of p(x) over all n_k * H * W patch vectors,
        (D,) float64 each, and that count. Averaged with these counts as weights they give the
        pooled statistics of all clients."""
        feats = self.features()
        total = torch.zeros(feats.shape[1], dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        for start in range(0, feats.shape[0], chunk):
            part = feats[start : start + chunk].double()
            total += part.sum(dim=(0, 2, 3))
            total_sq += part.square().sum(dim=(0, 2, 3))
        count = feats.shape[0] * feats.shape[2] * feats.shape[3]
        return total / count, total_sq / count, int(count)

    def model_from(self, state: Mapping[str, torch.Tensor]) -> FeatureAutoencoder:
        """A `FeatureAutoencoder` holding `state` (strict: keys and shapes must match)."""
        cfg = self.config
        model = FeatureAutoencoder(self.dim, hidden=cfg.hidden, latent=cfg.latent, seed=cfg.seed)
        model.load_state_dict(dict(state), strict=True)
        if not model.is_normalised:
            raise ValueError("the global autoencoder carries no standardisation statistics")
        return model

    def fit_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, proximal_mu: float
    ) -> tuple[State, dict[str, float]]:
        """Round t: E epochs of reconstruction loss from the global weights (the global
        standardisation is kept); returns the new state and the last epoch's loss."""
        model = self.model_from(global_state)
        cfg = self.config
        t0 = time.perf_counter()
        loss = train_autoencoder(
            model,
            self.features(),
            epochs=cfg.epochs,
            batch_size=cfg.train_batch_size,
            lr=cfg.lr,
            seed=round_seed(cfg.seed, round_idx),
            proximal_mu=proximal_mu,
            reference=dict(global_state) if proximal_mu > 0 else None,
        )
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return state, {"loss": float(loss), "train_s": time.perf_counter() - t0}

    def evaluate_local(
        self, global_state: Mapping[str, torch.Tensor], *, round_idx: int, model_file: Path | None
    ) -> DetectionMetrics:
        """The final global autoencoder on the local test set; threshold from the held-out
        normals. Per-image scores stay at the site (``test_scores.npz``)."""
        if not self.test:
            raise ValueError("this client has no test images to evaluate on")
        det = AutoencoderDetector.from_model(
            self.model_from(global_state),
            image_hw=self.features_client.image_hw,
            config=self.config,
        )
        calibration = self.features_client.calibration
        if calibration:
            det.calibrate(calibration, quantile=self.config.threshold_quantile)
        metrics, scores = det.evaluate_with_scores(self.test)
        np.savez(
            self.state_dir / SCORES_FILE,
            labels=scores.labels,
            image_scores=scores.image_scores,
            files=np.array([str(s.path) for s in scores.samples]),
        )
        if model_file is not None:
            det.save(model_file)
        return metrics
