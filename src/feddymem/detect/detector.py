"""Memory-bank detectors: the distance of z = G(p(x)) to the nearest items of a memory M.

`MemoryBankDetector` scores images against a memory (a PatchCore coreset, or FedDyMem's global
memory M_g with a site's generator G_k); `PatchCoreDetector` fits that memory centrally from
normal images by coreset subsampling. What follows the patch scores (maps, image scores,
thresholds, the model file's header) is the family's, in `feddymem.detect.base`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from feddymem.config import ConfigError, DetectorConfig, FeatureConfig, FedDyMemConfig, from_dict
from feddymem.data import Sample
from feddymem.detect import threshold as thresholds
from feddymem.detect.base import Detector, ScoreResult
from feddymem.detect.features import PatchFeatureExtractor, patch_vectors
from feddymem.detect.knn import NearestNeighbors
from feddymem.detect.modelfile import (
    ModelFileError,
    calibration_scores_from_state,
    map_floor_from_state,
)
from feddymem.detect.sampling import subsample

log = logging.getLogger(__name__)


def patch_scores(distances: torch.Tensor, *, scoring: str = "nearest") -> torch.Tensor:
    """Patch anomaly scores from (N, k) ascending distances to the memory, (N,).

    'nearest': the distance to the nearest item (PatchCore). 'softmin': the distances weighted by
    a softmin over the k nearest (CFA), which discounts a lone close item among far ones.
    """
    if scoring == "nearest" or distances.shape[1] == 1:
        return distances[:, 0]
    if scoring == "softmin":
        weights = torch.softmax(-distances, dim=1)
        return (weights * distances).sum(dim=1)
    raise ValueError(f"unknown scoring {scoring!r}; known: 'nearest', 'softmin'")


class MemoryBankDetector(Detector):
    """Scores images against a memory bank M (M, d) in the space of z = G(p(x)).

    Fitted state: `memory_` (M, d), `image_hw_` (H_in, W_in), `threshold_` (float or None).
    """

    kind = "memory_bank"
    supports_tiling = True  # a patch's score depends on its features only, not its position

    def __init__(
        self,
        config: FeatureConfig,
        *,
        weights: Path | None = None,
        extractor: PatchFeatureExtractor | None = None,
    ) -> None:
        super().__init__(config, weights=weights, extractor=extractor)
        self.generator: nn.Module | None = None
        self.memory_: torch.Tensor | None = None
        # (D,) per-channel factors applied to p(x) before the memory (PatchCore's tap_balance)
        self.feature_scale_: torch.Tensor | None = None
        self._index: NearestNeighbors | None = None

    @property
    def _scoring(self) -> str:
        return getattr(self.config, "scoring", "nearest")

    @property
    def _k(self) -> int:
        if self._scoring == "softmin":
            return int(getattr(self.config, "score_k", 3))
        return int(getattr(self.config, "num_neighbors", 1))

    def set_memory(self, memory: torch.Tensor, *, image_hw: tuple[int, int]) -> None:
        """Install memory bank (M, d) and the input size it was built for."""
        if memory.ndim != 2 or memory.shape[0] < 1:
            raise ValueError(f"memory must be (M, d) with M >= 1, got {tuple(memory.shape)}")
        if not torch.isfinite(memory).all():
            raise ValueError("memory holds NaN or Inf values")
        self.memory_ = memory.float().contiguous()
        self.image_hw_ = image_hw
        self._index = self._knn_index(self.memory_)

    def _knn_index(self, memory: torch.Tensor) -> NearestNeighbors:
        """A k-NN index over `memory` (M, d) with the config's backend (torch when unset)."""
        backend: Literal["faiss", "torch"] = (
            "faiss" if getattr(self.config, "knn_backend", "torch") == "faiss" else "torch"
        )
        return NearestNeighbors(memory, backend=backend)

    @property
    def index(self) -> NearestNeighbors:
        """The k-NN index over the memory bank (fitted detectors only)."""
        self._check_fitted()
        assert self._index is not None
        return self._index

    def _is_fitted(self) -> bool:
        return self.memory_ is not None and self._index is not None

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> p(x), (B, D, H, W), times `feature_scale_` when one is fitted
        (in place: the extractor's output is a fresh tensor)."""
        feats = super().features(images)
        if self.feature_scale_ is not None:
            feats.mul_(self.feature_scale_.view(1, -1, 1, 1))
        return feats

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> z(x), (B, d, H, W): features, then the generator if any."""
        feats = self.features(images)
        if self.generator is not None:
            with torch.inference_mode():
                feats = self.generator(feats)
        return feats

    def score_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> the k-NN distances of z(x) to the memory, (B, H, W)."""
        return self.nearest_patch_scores(self.embed(images))

    def nearest_patch_scores(
        self, z: torch.Tensor, *, index: NearestNeighbors | None = None
    ) -> torch.Tensor:
        """z(x) (B, d, H, W), already embedded -> patch scores (B, H, W): the k-NN distances to
        the memory bank (the step `score` runs after `embed`), or to the memory of `index`
        (a bank built without some images, to score them out of sample)."""
        if index is None:
            self._check_fitted()
            assert self._index is not None
            index = self._index
        b, _, h, w = z.shape
        distances, _ = index.search(patch_vectors(z), self._k)
        return patch_scores(distances, scoring=self._scoring).view(b, h, w)

    # --- persistence -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        assert self.memory_ is not None
        out: dict[str, Any] = {"memory": self.memory_}
        if self.feature_scale_ is not None:
            out["feature_scale"] = self.feature_scale_.clone()
        if self.generator is not None:
            out["generator"] = {
                k: v.detach().clone() for k, v in self.generator.state_dict().items()
            }
        return out

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, weights: Path | None = None, where: str = "state"
    ) -> MemoryBankDetector:
        """Rebuild a memory-bank detector from `state()`: a `PatchCoreDetector` for a
        `DetectorConfig`, a FedDyMem site's detector (G_k and M_g) for a `FedDyMemConfig`."""
        from feddymem.method.generator import MemoryGenerator

        cls_name = state.get("config_class")
        config_cls = _CONFIG_CLASSES.get(cls_name)  # type: ignore[arg-type]
        if config_cls is None:
            raise ModelFileError(f"{where}: unknown config class {cls_name!r}")
        config = from_dict(config_cls, json.loads(state["config"]), where=where)
        detector: MemoryBankDetector = (
            PatchCoreDetector(config, weights=weights)
            if isinstance(config, DetectorConfig)
            else MemoryBankDetector(config, weights=weights)
        )
        if "generator" in state:
            assert isinstance(config, FedDyMemConfig)
            gen = MemoryGenerator(
                in_channels=detector.extractor.out_channels, gamma_d=config.gamma_d
            )
            gen.load_state_dict(state["generator"])
            detector.generator = gen.eval()
        if "feature_scale" in state:
            detector.feature_scale_ = _feature_scale(
                state["feature_scale"], channels=detector.extractor.out_channels, where=where
            )
        detector.set_memory(state["memory"], image_hw=tuple(state["image_hw"]))
        detector._restore_tiling(state, where=where)
        detector.threshold_ = state["threshold"]
        detector.map_floor_ = map_floor_from_state(state, where=where)
        detector.calibration_scores_ = calibration_scores_from_state(state, where=where)
        return detector


_CONFIG_CLASSES: dict[str, type[FeatureConfig]] = {
    "DetectorConfig": DetectorConfig,
    "FedDyMemConfig": FedDyMemConfig,
}


def _feature_scale(scale: Any, *, channels: int, where: str) -> torch.Tensor:
    """A saved `feature_scale_`, checked: (D,) finite positive factors."""
    if (
        not isinstance(scale, torch.Tensor)
        or scale.shape != (channels,)
        or not bool(torch.isfinite(scale).all())
        or not bool((scale > 0).all())
    ):
        raise ModelFileError(f"{where}: feature_scale must be {channels} finite positive factors")
    return scale.float()


class PatchCoreDetector(MemoryBankDetector):
    """PatchCore-style detector fitted centrally on normal images.

    fit: features of every training patch, a coreset (greedy k-center or random) as memory,
    and a threshold from held-out normal images, scored against a memory built without them.
    With ``refit_with_calibration`` the memory is then built again from every training image,
    the held-out ones included, so that a tenth of the normals is not lost to the bank (new
    normals then tend to score lower than the held-out ones did, so the threshold errs towards
    fewer false alarms; the fit does the coreset twice). With ``calibration="crossfit"`` no
    image is held out: the memory comes from every training image, and the threshold from
    every training image's score against a memory built without its fold (the coreset runs
    once per fold more), a quantile over all the normals instead of a tenth of them. Fitted
    state also `n_patches_`.
    """

    kind = "patchcore"
    config: DetectorConfig

    def __init__(
        self,
        config: DetectorConfig,
        *,
        weights: Path | None = None,
        extractor: PatchFeatureExtractor | None = None,
    ) -> None:
        super().__init__(config, weights=weights, extractor=extractor)
        self.n_patches_: int | None = None

    def fit(
        self,
        samples: Sequence[Sample],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> PatchCoreDetector:
        """Fit on normal training samples (labels must all be 0)."""
        cfg = self.config
        crossfit = cfg.calibration == "crossfit"
        if crossfit and self._plan_tiling([s.path for s in samples]) is not None:
            log.info(
                "tiled fit: the threshold comes from a held-out %.0f%% of the normals "
                "(cross-fitting needs one grid per image)",
                100 * cfg.calibration_fraction,
            )
            crossfit = False
        train, calib, image_hw = self._fit_split(
            samples, fraction=0.0 if crossfit else cfg.calibration_fraction, seed=cfg.seed
        )
        if self.tiling_ is not None and cfg.refit_with_calibration:
            raise ValueError(
                "tiled fits take no refit (the images are tiled: refit needs one grid per "
                "image); set tile='off' or drop refit_with_calibration"
            )
        self.feature_scale_ = None  # the factors (if any) are fitted on the raw features
        bank = self._patch_bank(train, image_hw=image_hw, progress=progress)
        if cfg.tap_balance:
            self.feature_scale_ = tap_balance_scale(bank, self.extractor.tap_channels)
            bank *= self.feature_scale_
        self._install_coreset(bank, image_hw=image_hw)
        self._check_neighbors()
        if crossfit:
            self._crossfit_threshold(bank)
            return self
        if not (calib and cfg.refit_with_calibration):
            self._set_threshold(train, calib, quantile=cfg.threshold_quantile)
            return self
        # The held-out images' features, extracted once: scored against the bank without them
        # for the threshold, then added to it.
        held_out = self._patch_bank(calib, image_hw=image_hw, progress=progress)
        h, w = self.extractor.grid_size(image_hw)
        z = held_out.view(-1, h, w, held_out.shape[1]).permute(0, 3, 1, 2)
        results = [
            self.result_from_patch_scores(self.nearest_patch_scores(part))
            for part in z.split(cfg.batch_size)
        ]
        self._threshold_from_results(results, quantile=cfg.threshold_quantile)
        self._install_coreset(torch.cat([bank, held_out]), image_hw=image_hw)
        return self

    def _check_neighbors(self) -> None:
        """k of the patch score must not exceed the memory bank's size."""
        assert self.memory_ is not None
        if self._k > self.memory_.shape[0]:
            raise ConfigError(
                f"num_neighbors = {self._k} exceeds the memory bank's {self.memory_.shape[0]} "
                "items; lower num_neighbors or raise coreset_ratio"
            )

    def _crossfit_threshold(self, bank: torch.Tensor) -> None:
        """Threshold and map floor from out-of-fold scores: the training images (their patch
        vectors `bank`, (n * H * W, D), image by image) are split into seeded folds, and each
        fold is scored against a memory subsampled, as the fitted one is, from the other folds'
        patches, so every training image counts as a held-out normal once."""
        cfg = self.config
        assert self.image_hw_ is not None
        h, w = self.extractor.grid_size(self.image_hw_)
        n = bank.shape[0] // (h * w)
        folds = min(cfg.calibration_folds, n)
        if folds < 2:
            log.warning(
                "%d training image(s): too few to cross-fit, threshold set on training images "
                "(it will be optimistic)",
                n,
            )
            folds = 1
        images = bank.view(n, h * w, bank.shape[1])
        order = np.random.default_rng(cfg.seed).permutation(n)
        size_correct = cfg.crossfit_correction == "size" and folds >= 3
        results, small = [], []
        for fold in range(folds):
            held = torch.from_numpy(np.sort(order[fold::folds]))
            # one fold (a single image): scored against a memory of itself, as warned
            rest = (
                images[torch.from_numpy(np.setdiff1d(order, held.numpy()))] if folds > 1 else images
            )
            z = images[held].view(len(held), h, w, -1).permute(0, 3, 1, 2)
            results.append(self._fold_scores(z, rest, seed=cfg.seed + 1 + fold))
            if size_correct:  # the same fold against the next fold's bank alone
                other = torch.from_numpy(np.sort(order[(fold + 1) % folds :: folds]))
                small.append((self._fold_scores(z, images[other], seed=cfg.seed + 1 + fold), other))
        if not size_correct:
            self._threshold_from_results(results, quantile=cfg.threshold_quantile)
            return
        scores = torch.cat([r.image_scores for r in results]).numpy()
        n_small = float(np.mean([len(o) for _, o in small]))
        corrected = thresholds.size_corrected(
            scores,
            torch.cat([r.image_scores for r, _ in small]).numpy(),
            n_bank=float(n - n / folds),
            n_small=n_small,
            n_full=float(n),
        )
        log.info(
            "cross-fitted scores carried to the whole bank's size: median factor %.3f",
            float(np.median(corrected / np.maximum(scores, 1e-12))),
        )
        self._threshold_from_results(results, quantile=cfg.threshold_quantile, scores=corrected)

    def _fold_scores(self, z: torch.Tensor, rest: torch.Tensor, *, seed: int) -> ScoreResult:
        """Patch vectors `z` (b, D, H, W) scored against a memory subsampled, as the fitted one
        is, from the images `rest` (m, H * W, D)."""
        cfg = self.config
        memory = subsample(
            rest.reshape(-1, rest.shape[-1]), method=cfg.sampler, ratio=cfg.coreset_ratio, seed=seed
        )
        return self.result_from_patch_scores(
            self.nearest_patch_scores(z, index=self._knn_index(memory))
        )

    def _patch_bank(
        self,
        samples: Sequence[Sample],
        *,
        image_hw: tuple[int, int],
        progress: Callable[[int], None] | None,
    ) -> torch.Tensor:
        """Every patch vector of `samples`, (N * H * W, D); when tiled, every tile's (a tile
        counts as an image), drawn uniformly (seeded) down to `tile_bank_patches` in all, so
        the bank's memory is bounded whatever the image size."""
        keep = 1.0
        if self.tiling_ is not None:
            cells = (self.tiling_.tile // self.extractor.stride) ** 2
            n_tiles = len(samples) * self.tiling_.grid(self.extractor.stride).n_tiles
            keep = min(1.0, self.config.tile_bank_patches / (n_tiles * cells))
            log.info("tiled bank: %d tiles, %.3g of their patches kept", n_tiles, keep)
        gen = torch.Generator().manual_seed(self.config.seed)
        parts = []
        for z in self._train_features(samples, image_hw=image_hw, progress=progress):
            rows = patch_vectors(z)
            if keep < 1.0:
                n = max(1, round(keep * rows.shape[0]))
                rows = rows[torch.randperm(rows.shape[0], generator=gen)[:n]]
            parts.append(rows)
        return torch.cat(parts)

    def _install_coreset(self, bank: torch.Tensor, *, image_hw: tuple[int, int]) -> None:
        """Subsample `bank` as the config says and make it the memory."""
        cfg = self.config
        self.n_patches_ = int(bank.shape[0])
        memory = subsample(bank, method=cfg.sampler, ratio=cfg.coreset_ratio, seed=cfg.seed)
        log.info("memory bank: %d of %d patches (%s)", memory.shape[0], bank.shape[0], cfg.sampler)
        self.set_memory(memory.clone(), image_hw=image_hw)


def tap_balance_scale(bank: torch.Tensor, tap_channels: Sequence[int]) -> torch.Tensor:
    """(D,) factors that give every tap's channels the same mean variance over `bank`.

    `bank` (N, D) holds the taps' channels side by side (`tap_channels` of them each, in order).
    Each tap's factor is 1 / sqrt(mean variance of its channels), so a channel counts in the
    patch distance by its own spread, not by the stage it comes from; channels keep their
    relative scales within a tap (unlike a per-channel standardisation, which would lift
    near-constant channels to the level of informative ones).
    """
    if sum(tap_channels) != bank.shape[1]:
        raise ValueError(f"taps of {list(tap_channels)} channels do not make D={bank.shape[1]}")
    # every 16th row: a real bank has hundreds of thousands, so tens of thousands remain
    variance = bank[::16].double().var(dim=0)
    per_tap = torch.stack([v.mean() for v in variance.split(list(tap_channels))])
    if not bool((per_tap > 0).all()):
        raise ValueError(f"a tap is constant over the bank (mean variances {per_tap.tolist()})")
    return per_tap.rsqrt().repeat_interleave(torch.tensor(tap_channels)).float()
