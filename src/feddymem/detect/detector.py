"""Memory-bank anomaly detectors with the fit / score / predict contract.

`MemoryBankDetector` scores images against a fitted memory: patch features p(x) (optionally
mapped by a memory generator z = G(p(x))), distance to the nearest memory items, an anomaly map
upsampled and blurred to the input size, and the image score as the map's maximum.
`PatchCoreDetector` fits that memory centrally from normal images by coreset subsampling.
A fitted detector saves to and loads from one file that carries its settings.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from feddymem.config import DetectorConfig, FeatureConfig, FedDyMemConfig, from_dict, to_dict
from feddymem.data import Batch, LoadReport, Sample, iter_batches, resolve_size
from feddymem.detect.anomaly_map import to_anomaly_maps
from feddymem.detect.features import PatchFeatureExtractor
from feddymem.detect.knn import NearestNeighbors
from feddymem.detect.sampling import subsample
from feddymem.metrics import (
    DetectionMetrics,
    evaluate,
    operating_point,
    per_defect_image_auroc,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# The map floor is the median of every _FLOOR_STRIDE-th pixel (each way) of the held-out normals'
# maps: the maps are smooth (upsampled, blurred), and a sixteenth of them keeps the memory small.
_FLOOR_STRIDE = 4


class NotFittedError(RuntimeError):
    """The detector was used before `fit` (or `load`)."""


class ModelFileError(ValueError):
    """A model file is missing, corrupt or of an unknown format."""


@dataclass(frozen=True)
class ScoreResult:
    """Scores of a batch: `image_scores` (B,), `anomaly_maps` (B, H_in, W_in)."""

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor


@dataclass(frozen=True)
class Prediction:
    """Scores plus the decisions of the normal-data threshold: `is_anomalous` (B,) bool."""

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    is_anomalous: torch.Tensor
    threshold: float


@dataclass(frozen=True)
class DatasetScores:
    """Scores over a whole sample list, with what loading skipped."""

    samples: list[Sample]
    labels: np.ndarray  # (N,) int
    image_scores: np.ndarray  # (N,) float32
    anomaly_maps: np.ndarray | None  # (N, H, W) float32, kept only when asked for
    masks: np.ndarray | None  # (N, H, W) bool
    has_mask: np.ndarray | None  # (N,) bool
    report: LoadReport

    def per_defect(self) -> dict[str, dict[str, float | int]]:
        """Image AUROC of each ``test/<defect>`` folder against every good image
        (:func:`feddymem.metrics.per_defect_image_auroc`)."""
        return per_defect_image_auroc(
            self.labels, self.image_scores, [s.defect for s in self.samples]
        )

    def operating_point(self, threshold: float) -> dict[str, float | int]:
        """Recall, false-alarm rate, precision and F1 of the images flagged by ``threshold``
        (:func:`feddymem.metrics.operating_point`)."""
        return operating_point(self.labels, self.image_scores, threshold=threshold)


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


class MemoryBankDetector:
    """Scores images against a memory bank M (M, d) in the space of z = G(p(x)).

    Fitted state: `memory_` (M, d), `image_hw_` (H_in, W_in), `threshold_` (float or None).
    """

    kind = "memory_bank"

    def __init__(
        self,
        config: FeatureConfig,
        *,
        weights: Path | None = None,
        extractor: PatchFeatureExtractor | None = None,
    ) -> None:
        if extractor is not None and not extractor.matches(config.backbone, config.layers):
            raise ValueError(
                f"the extractor given ({extractor.backbone_name}, taps {extractor.layers}) is not "
                f"the one the config asks for ({config.backbone}, taps {config.layers})"
            )
        self.config = config
        self.weights = weights
        self._extractor: PatchFeatureExtractor | None = extractor
        self.generator: nn.Module | None = None
        self.memory_: torch.Tensor | None = None
        self.image_hw_: tuple[int, int] | None = None
        self.threshold_: float | None = None
        # the median anomaly-map value of the held-out normals: where `predict`'s heat maps start
        self.map_floor_: float | None = None
        # (D,) per-channel factors applied to p(x) before the memory (PatchCore's tap_balance)
        self.feature_scale_: torch.Tensor | None = None
        self._index: NearestNeighbors | None = None

    # --- pieces shared by every memory detector --------------------------------------------
    @property
    def extractor(self) -> PatchFeatureExtractor:
        if self._extractor is None:
            self._extractor = PatchFeatureExtractor(
                backbone=self.config.backbone, layers=self.config.layers, weights=self.weights
            )
        return self._extractor

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

    def _check_fitted(self) -> None:
        if self.memory_ is None or self._index is None or self.image_hw_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> p(x), (B, D, H, W), times `feature_scale_` when one is fitted
        (in place: the extractor's output is a fresh tensor)."""
        feats = self.extractor(images)
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

    def score(self, images: torch.Tensor) -> ScoreResult:
        """(B, 3, H_in, W_in) in [0, 1] -> image scores (B,) and anomaly maps (B, H_in, W_in)."""
        self._check_fitted()
        assert self._index is not None and self.image_hw_ is not None
        if tuple(images.shape[-2:]) != self.image_hw_:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} px but the detector was fitted at "
                f"{self.image_hw_}; load them with its image size"
            )
        return self.result_from_patch_scores(self.nearest_patch_scores(self.embed(images)))

    def nearest_patch_scores(self, z: torch.Tensor) -> torch.Tensor:
        """z(x) (B, d, H, W), already embedded -> patch scores (B, H, W): the k-NN distances to
        the memory bank (the step `score` runs after `embed`)."""
        self._check_fitted()
        assert self._index is not None
        b, d, h, w = z.shape
        distances, _ = self._index.search(z.permute(0, 2, 3, 1).reshape(-1, d), self._k)
        return patch_scores(distances, scoring=self._scoring).view(b, h, w)

    def result_from_patch_scores(self, scores: torch.Tensor) -> ScoreResult:
        """Patch scores (B, H, W) -> anomaly maps at the input size and image scores (the step
        `score` runs after `nearest_patch_scores`)."""
        self._check_fitted()
        assert self.image_hw_ is not None
        maps = to_anomaly_maps(scores, image_hw=self.image_hw_, sigma=self.config.blur_sigma)
        return ScoreResult(image_scores=self._image_scores(scores, maps), anomaly_maps=maps)

    def _image_scores(self, scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) patch scores and (B, H_in, W_in) maps -> (B,) image scores."""
        if self.config.image_score == "max":
            return maps.amax(dim=(1, 2))
        flat = scores.flatten(1)
        k = max(1, round(self.config.topk_fraction * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)

    def predict(self, images: torch.Tensor) -> Prediction:
        """Scores and decisions: anomalous where the image score exceeds `threshold_`."""
        result = self.score(images)
        if self.threshold_ is None:
            raise NotFittedError("the detector has no threshold (fit it on normal images)")
        return Prediction(
            image_scores=result.image_scores,
            anomaly_maps=result.anomaly_maps,
            is_anomalous=result.image_scores > self.threshold_,
            threshold=self.threshold_,
        )

    def batches(
        self,
        samples: Sequence[Sample],
        *,
        with_masks: bool = False,
        report: LoadReport | None = None,
        on_error: str = "skip",
        keep_originals: bool = False,
    ) -> Iterator[Batch]:
        """Load `samples` at the detector's input size, in batches (corrupt files skipped);
        `keep_originals` also hands back each image as decoded (`Batch.originals`)."""
        self._check_fitted()
        assert self.image_hw_ is not None
        return iter_batches(
            samples,
            size=self.image_hw_,
            batch_size=self.config.batch_size,
            with_masks=with_masks,
            report=report,
            on_error=on_error,  # type: ignore[arg-type]
            keep_originals=keep_originals,
        )

    def score_samples(
        self,
        samples: Sequence[Sample],
        *,
        with_masks: bool = False,
        keep_maps: bool = False,
        map_stride: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> DatasetScores:
        """Score every sample; maps and masks are kept only when asked for (memory), the maps
        at every `map_stride`-th pixel each way (1: whole)."""
        report = LoadReport(loaded=0, skipped=[])
        kept: list[Sample] = []
        labels, scores, maps, masks, has_mask = [], [], [], [], []
        for batch in self.batches(samples, with_masks=with_masks, report=report):
            result = self.score(batch.images)
            kept.extend(batch.samples)
            labels.append(batch.labels.numpy())
            scores.append(result.image_scores.numpy())
            if keep_maps:
                strided = result.anomaly_maps[:, ::map_stride, ::map_stride]
                maps.append(strided.numpy().astype(np.float32))
            if with_masks:
                masks.append(batch.masks[:, 0].numpy() > 0.5)
                has_mask.append(batch.has_mask.numpy())
            if progress is not None:
                progress(len(batch.samples))
        if not kept:
            raise ValueError(
                f"no image could be loaded out of {len(samples)}: {report.skipped[:3]}"
            )
        return DatasetScores(
            samples=kept,
            labels=np.concatenate(labels).astype(int),
            image_scores=np.concatenate(scores).astype(np.float32),
            anomaly_maps=np.concatenate(maps) if keep_maps else None,
            masks=np.concatenate(masks) if with_masks else None,
            has_mask=np.concatenate(has_mask) if with_masks else None,
            report=report,
        )

    def evaluate(
        self, samples: Sequence[Sample], *, progress: Callable[[int], None] | None = None
    ) -> DetectionMetrics:
        """Image AUROC and F1-max; pixel AUROC and AUPRO where masks exist."""
        return self.evaluate_with_scores(samples, progress=progress)[0]

    def evaluate_with_scores(
        self, samples: Sequence[Sample], *, progress: Callable[[int], None] | None = None
    ) -> tuple[DetectionMetrics, DatasetScores]:
        """`evaluate`, plus the image scores it was computed from (maps dropped), for ROC
        curves and per-image reports."""
        with_masks = any(s.mask_path is not None for s in samples)
        scores = self.score_samples(
            samples, with_masks=with_masks, keep_maps=with_masks, progress=progress
        )
        metrics = evaluate(
            labels=scores.labels,
            image_scores=scores.image_scores,
            masks=scores.masks,
            maps=scores.anomaly_maps,
            has_mask=scores.has_mask,
        )
        return metrics, dataclasses.replace(scores, anomaly_maps=None, masks=None)

    # --- fitting, shared by the fitted detectors (PatchCore, Gaussian, autoencoder) ----------
    def _fit_split(
        self, samples: Sequence[Sample], *, fraction: float, seed: int, min_images: int = 1
    ) -> tuple[list[Sample], list[Sample], tuple[int, int]]:
        """Check that `samples` are normal and enough, hold out a seeded share of them to set
        the threshold, and choose the input size: (train, calibration, (H, W))."""
        n_anomalous = sum(1 for s in samples if s.label != 0)
        if n_anomalous:
            raise ValueError(f"fit takes normal images only: {n_anomalous} anomalous given")
        if len(samples) < min_images:
            raise ValueError(
                f"fit needs at least {min_images} normal training image(s), got {len(samples)}"
            )
        train, calib = split_calibration(samples, fraction=fraction, seed=seed)
        image_hw = resolve_size(
            [s.path for s in train],
            image_size=self.config.image_size,
            keep_aspect=self.config.keep_aspect,
        )
        return train, calib, image_hw

    def _train_features(
        self,
        train: Sequence[Sample],
        *,
        image_hw: tuple[int, int],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[torch.Tensor]:
        """p(x) of the training images, batch by batch (B, D, H, W); unreadable files are
        skipped and counted in a warning, and none readable at all is an error."""
        report = LoadReport(loaded=0, skipped=[])
        any_batch = False
        for batch in iter_batches(
            train,
            size=image_hw,
            batch_size=self.config.batch_size,
            with_masks=False,
            report=report,
        ):
            any_batch = True
            yield self.features(batch.images)
            if progress is not None:
                progress(len(batch.samples))
        if not any_batch:
            raise ValueError(f"none of the {len(train)} training images could be loaded")
        if report.skipped:
            log.warning("fit skipped %d unreadable image(s)", len(report.skipped))

    def _set_threshold(
        self, train: Sequence[Sample], calib: Sequence[Sample], *, quantile: float
    ) -> None:
        """Threshold from the held-out normals (from the training images when none are held
        out, with a warning: it is then optimistic)."""
        if not calib:
            log.warning(
                "too few normal images to hold some out: threshold set on training images "
                "(it will be optimistic)"
            )
        self.calibrate(calib or train, quantile=quantile)

    def calibrate(self, normals: Sequence[Sample], *, quantile: float) -> float:
        """Threshold = `quantile` of the image scores of held-out normal images (and
        `map_floor_` = the median of their anomaly maps)."""
        scores = self.score_samples(normals, keep_maps=True, map_stride=_FLOOR_STRIDE)
        assert scores.anomaly_maps is not None
        return self._threshold_from(
            scores.image_scores, maps=scores.anomaly_maps, quantile=quantile
        )

    def _threshold_from_results(self, results: Sequence[ScoreResult], *, quantile: float) -> float:
        """`_threshold_from` over the normal images scored batch by batch in `results`."""
        return self._threshold_from(
            torch.cat([r.image_scores for r in results]).numpy(),
            maps=torch.cat(
                [r.anomaly_maps[:, ::_FLOOR_STRIDE, ::_FLOOR_STRIDE] for r in results]
            ).numpy(),
            quantile=quantile,
        )

    def _threshold_from(self, scores: np.ndarray, *, maps: np.ndarray, quantile: float) -> float:
        """Set the threshold to `quantile` of normal images' `scores` (N,) and the map floor to
        the median of their anomaly-map values `maps` (any shape)."""
        self.threshold_ = float(np.quantile(scores, quantile))
        self.map_floor_ = float(np.median(maps))
        return self.threshold_

    # --- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        self._check_fitted()
        assert self.memory_ is not None and self.image_hw_ is not None
        out: dict[str, Any] = {
            "format": "feddymem-detector",
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "config_class": type(self.config).__name__,
            "config": json.dumps(to_dict(self.config)),
            "memory": self.memory_,
            "image_hw": list(self.image_hw_),
            "threshold": self.threshold_,
            "map_floor": self.map_floor_,
        }
        if self.feature_scale_ is not None:
            out["feature_scale"] = self.feature_scale_.clone()
        if self.generator is not None:
            out["generator"] = {
                k: v.detach().clone() for k, v in self.generator.state_dict().items()
            }
        return out

    def save(self, path: Path) -> Path:
        """Write the fitted detector and its settings to one file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)
        return path


_CONFIG_CLASSES: dict[str, type[FeatureConfig]] = {
    "DetectorConfig": DetectorConfig,
    "FedDyMemConfig": FedDyMemConfig,
}

# Detector kinds defined in other modules, imported on demand: kind -> (module, class). The class
# rebuilds itself with `from_state(state, *, weights, where)` from what its `state()` saved.
_EXTERNAL_KINDS: dict[str, tuple[str, str]] = {
    "gaussian": ("feddymem.detect.gaussian", "GaussianDetector"),
    "autoencoder": ("feddymem.detect.autoencoder", "AutoencoderDetector"),
}


def load_detector(path: Path, *, weights: Path | None = None) -> MemoryBankDetector:
    """Load any detector written by `save` (a PatchCore model or a FedDyMem client's model)."""
    from feddymem.method.generator import MemoryGenerator

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ModelFileError(f"{path} is not a readable model file: {err}") from err
    if not isinstance(state, dict) or state.get("format") != "feddymem-detector":
        raise ModelFileError(f"{path} is not a feddymem model file")
    if state.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {state.get('version')}, expected {FORMAT_VERSION}"
        )
    if state.get("kind") in _EXTERNAL_KINDS:
        module, name = _EXTERNAL_KINDS[state["kind"]]
        detector_cls = getattr(importlib.import_module(module), name)
        return detector_cls.from_state(state, weights=weights, where=str(path))
    cls = _CONFIG_CLASSES.get(state["config_class"])
    if cls is None:
        raise ModelFileError(f"{path}: unknown config class {state['config_class']!r}")
    config = from_dict(cls, json.loads(state["config"]), where=str(path))
    detector: MemoryBankDetector = (
        PatchCoreDetector(config, weights=weights)
        if isinstance(config, DetectorConfig)
        else MemoryBankDetector(config, weights=weights)
    )
    if "generator" in state:
        assert isinstance(config, FedDyMemConfig)
        gen = MemoryGenerator(in_channels=detector.extractor.out_channels, gamma_d=config.gamma_d)
        gen.load_state_dict(state["generator"])
        detector.generator = gen.eval()
    if "feature_scale" in state:
        scale = state["feature_scale"]
        if (
            not isinstance(scale, torch.Tensor)
            or scale.shape != (detector.extractor.out_channels,)
            or not bool(torch.isfinite(scale).all())
            or not bool((scale > 0).all())
        ):
            raise ModelFileError(
                f"{path}: feature_scale must be {detector.extractor.out_channels} finite "
                "positive factors"
            )
        detector.feature_scale_ = scale.float()
    detector.set_memory(state["memory"], image_hw=tuple(state["image_hw"]))
    detector.threshold_ = state["threshold"]
    detector.map_floor_ = map_floor_from_state(state, where=str(path))
    return detector


def map_floor_from_state(state: dict[str, Any], *, where: str) -> float | None:
    """The saved map floor: a finite float, or None (also for files written before it was
    saved, whose heat maps then start at zero)."""
    floor = state.get("map_floor")
    if floor is None:
        return None
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not math.isfinite(floor):
        raise ModelFileError(f"{where}: map_floor must be a finite number, got {floor!r}")
    return float(floor)


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
        train, calib, image_hw = self._fit_split(
            samples, fraction=0.0 if crossfit else cfg.calibration_fraction, seed=cfg.seed
        )
        self.feature_scale_ = None  # the factors (if any) are fitted on the raw features
        bank = self._patch_bank(train, image_hw=image_hw, progress=progress)
        if cfg.tap_balance:
            self.feature_scale_ = tap_balance_scale(bank, self.extractor.tap_channels)
            bank *= self.feature_scale_
        self._install_coreset(bank, image_hw=image_hw)
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
        results = []
        for fold in range(folds):
            held = torch.from_numpy(np.sort(order[fold::folds]))
            # one fold (a single image): scored against a memory of itself, as warned
            rest = (
                images[torch.from_numpy(np.setdiff1d(order, held.numpy()))] if folds > 1 else images
            )
            memory = subsample(
                rest.reshape(-1, bank.shape[1]),
                method=cfg.sampler,
                ratio=cfg.coreset_ratio,
                seed=cfg.seed + 1 + fold,
            )
            distances, _ = self._knn_index(memory).search(
                images[held].reshape(-1, bank.shape[1]), self._k
            )
            patch = patch_scores(distances, scoring=self._scoring).view(len(held), h, w)
            results.append(self.result_from_patch_scores(patch))
        self._threshold_from_results(results, quantile=cfg.threshold_quantile)

    def _patch_bank(
        self,
        samples: Sequence[Sample],
        *,
        image_hw: tuple[int, int],
        progress: Callable[[int], None] | None,
    ) -> torch.Tensor:
        """Every patch vector of `samples`, (N * H * W, D)."""
        return torch.cat(
            [
                z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                for z in self._train_features(samples, image_hw=image_hw, progress=progress)
            ]
        )

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


def split_calibration(
    normals: Sequence[Sample], *, fraction: float, seed: int, minimum: int = 10
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of the normals (seeded) for the threshold; none when too few."""
    n = len(normals)
    n_calib = round(n * fraction)
    if n < minimum or n_calib < 1:
        return list(normals), []
    order = np.random.default_rng(seed).permutation(n)
    calib = {int(i) for i in order[:n_calib]}
    return (
        [s for i, s in enumerate(normals) if i not in calib],
        [s for i, s in enumerate(normals) if i in calib],
    )
