"""The detector family's common base: the fit / score / predict contract.

A `Detector` turns images into patch scores on the feature grid (its subclass says how: the
distance to a memory bank, a Mahalanobis distance, a reconstruction error), and everything
after that is shared: anomaly maps upsampled and blurred to the input size, the image score,
the threshold from normal images, batching, evaluation (over whole sample lists in
`dataset_scores`) and the model file's header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feddymem.config import FeatureConfig, to_dict
from feddymem.data import Batch, LoadReport, Sample, iter_batches, resolve_size
from feddymem.data.sizing import median_image_size
from feddymem.detect import dataset_scores
from feddymem.detect import threshold as thresholds
from feddymem.detect.anomaly_map import to_anomaly_maps
from feddymem.detect.dataset_scores import DatasetScores
from feddymem.detect.features import PatchFeatureExtractor
from feddymem.detect.modelfile import FORMAT, FORMAT_VERSION, ModelFileError, write_state
from feddymem.detect.tiling import (
    TilePlan,
    border_rule,
    plan_from_state,
    plan_tiling,
)
from feddymem.metrics import DetectionMetrics

log = logging.getLogger(__name__)


class NotFittedError(RuntimeError):
    """The detector was used before `fit` (or `load`)."""


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


class Detector:
    """Base of every detector: subclasses supply `score_patches` and their fitted state.

    Fitted state shared by all: `image_hw_` (H_in, W_in), `threshold_` (float or None),
    `map_floor_` (the median anomaly-map value of held-out normals, where heat maps start),
    `calibration_scores_` (the image scores of the normals that set the threshold, (N,), kept so
    that thresholds for other false-alarm rates come from normals only; None in older files).
    """

    kind = "detector"
    # whether `score_patches` is position-free, so that a tile can stand for an image
    supports_tiling = False

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
        self.image_hw_: tuple[int, int] | None = None
        self.threshold_: float | None = None
        self.map_floor_: float | None = None
        # how images are cut into tiles (None: resized whole); `image_hw_` is then the size
        # images are loaded at and the tile plan's
        self.tiling_: TilePlan | None = None
        # px of the working image's edge band that the image score leaves out (tiled fits,
        # by `tiling.border_rule` on held-out normals at calibration; 0: none)
        self.image_border_: int = 0
        self.calibration_scores_: np.ndarray | None = None

    # --- what a subclass supplies ----------------------------------------------------------
    def _is_fitted(self) -> bool:
        """True once the subclass's own fitted state is there."""
        raise NotImplementedError

    def score_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) in [0, 1], already checked -> patch scores (B, H, W)."""
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        """The subclass's part of the model file (tensors and plain values)."""
        raise NotImplementedError

    # --- shared pieces -----------------------------------------------------------------------
    @property
    def extractor(self) -> PatchFeatureExtractor:
        if self._extractor is None:
            self._extractor = PatchFeatureExtractor(
                backbone=self.config.backbone, layers=self.config.layers, weights=self.weights
            )
        return self._extractor

    def _check_fitted(self) -> None:
        if self.image_hw_ is None or not self._is_fitted():
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> p(x), (B, D, H, W)."""
        return self.extractor(images)

    def score(self, images: torch.Tensor) -> ScoreResult:
        """(B, 3, H_in, W_in) in [0, 1] -> image scores (B,) and anomaly maps (B, H_in, W_in)."""
        self._check_fitted()
        if tuple(images.shape[-2:]) != self.image_hw_:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} px but the detector was fitted at "
                f"{self.image_hw_}; load them with its image size"
            )
        return self.result_from_patch_scores(self.image_patch_scores(images))

    def image_patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> patch scores (B, H, W) on the image's feature grid: those of
        `score_patches`, or, when tiled, every tile's scored in batches of `batch_size` tiles
        and stitched (overlaps blended, each tile's border cells down-weighted)."""
        if self.tiling_ is None:
            return self.score_patches(images)
        stride = self.extractor.stride
        tiles = self.tiling_.cut(images, stride)
        scores = torch.cat(
            [self.score_patches(part) for part in tiles.split(self.config.batch_size)]
        )
        return self.tiling_.stitch(scores, stride)

    def _tile_features(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """p(x) of `images` (B, 3, H_in, W_in): of the whole images, or, when tiled, of their
        tiles in batches of `batch_size` tiles, (b, D, h, w) each."""
        if self.tiling_ is None:
            yield self.features(images)
            return
        tiles = self.tiling_.cut(images, self.extractor.stride)
        for part in tiles.split(self.config.batch_size):
            yield self.features(part)

    def _images_per_batch(self) -> int:
        """Images per loaded batch: `batch_size`, fewer when tiled images are large, so that a
        batch holds at most 4 * `batch_size` tiles' worth of pixels (bounded memory)."""
        if self.tiling_ is None:
            return self.config.batch_size
        h, w = self.tiling_.padded_hw
        budget = 4 * self.config.batch_size * self.tiling_.tile**2
        return max(1, min(self.config.batch_size, budget // (h * w)))

    def _plan_tiling(self, paths: Sequence[Path]) -> TilePlan | None:
        """The tiling rule (`tiling.choose_tiling`) applied to the median size of `paths`
        (headers of up to 16 files, no decode); None: resize."""
        cfg = self.config
        if cfg.tile == "off":
            return None
        if not self.supports_tiling:
            raise ValueError(f"{type(self).__name__} scores fixed positions and cannot tile")
        return plan_tiling(
            median_image_size(paths), cfg, coarse_stride=self.extractor.coarse_stride
        )

    def result_from_patch_scores(self, scores: torch.Tensor) -> ScoreResult:
        """Patch scores (B, H, W) -> anomaly maps at the input size and image scores (the step
        `score` runs after `score_patches`)."""
        self._check_fitted()
        assert self.image_hw_ is not None
        maps = to_anomaly_maps(scores, image_hw=self.image_hw_, sigma=self.config.blur_sigma)
        return ScoreResult(image_scores=self._image_scores(scores, maps), anomaly_maps=maps)

    def _image_scores(self, scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) patch scores and (B, H_in, W_in) maps -> (B,) image scores (without the
        `image_border_` band, when there is one)."""
        if self.image_border_:
            b = self.image_border_
            c = b * scores.shape[1] // maps.shape[1]  # the band in patch cells
            scores = scores[:, c : scores.shape[1] - c, c : scores.shape[2] - c]
            maps = maps[:, b : maps.shape[1] - b, b : maps.shape[2] - b]
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
            batch_size=self._images_per_batch(),
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
        at every `map_stride`-th pixel each way (1: whole) (`dataset_scores.score_samples`)."""
        return dataset_scores.score_samples(
            self,
            samples,
            with_masks=with_masks,
            keep_maps=keep_maps,
            map_stride=map_stride,
            progress=progress,
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
        curves and per-image reports (`dataset_scores.evaluate_with_scores`)."""
        return dataset_scores.evaluate_with_scores(self, samples, progress=progress)

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
        train, calib = thresholds.split_calibration(samples, fraction=fraction, seed=seed)
        image_hw = resolve_size(
            [s.path for s in train],
            image_size=self.config.image_size,
            keep_aspect=self.config.keep_aspect,
        )
        self.tiling_ = self._plan_tiling([s.path for s in train])
        if self.tiling_ is not None:
            image_hw = self.tiling_.image_hw
        return train, calib, image_hw

    def _train_features(
        self,
        train: Sequence[Sample],
        *,
        image_hw: tuple[int, int],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[torch.Tensor]:
        """p(x) of the training images, batch by batch (B, D, H, W) (of their tiles when
        tiled); unreadable files are skipped and counted in a warning, and none readable at
        all is an error."""
        report = LoadReport(loaded=0, skipped=[])
        any_batch = False
        for batch in iter_batches(
            train,
            size=image_hw,
            batch_size=self._images_per_batch(),
            with_masks=False,
            report=report,
        ):
            any_batch = True
            yield from self._tile_features(batch.images)
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
        `map_floor_` = the median of their anomaly maps). Tiled, the border rule is decided
        first from the same normals' maps (`_decide_border`)."""
        stride = thresholds.FLOOR_STRIDE
        self.image_border_ = 0
        scores = self.score_samples(normals, keep_maps=True, map_stride=stride)
        assert scores.anomaly_maps is not None
        if self._decide_border(scores.anomaly_maps, map_stride=stride):
            scores = self.score_samples(normals, keep_maps=True, map_stride=stride)
        assert scores.anomaly_maps is not None
        return self._threshold_from(
            scores.image_scores, maps=scores.anomaly_maps, quantile=quantile
        )

    def _decide_border(self, maps: np.ndarray, *, map_stride: int) -> bool:
        """Tiled, with `tile_border` "auto": leave the edge band (two cells of the coarsest tap,
        the reach of a tile's zero padding) out of the image score when the held-out normals'
        `maps` (taken every `map_stride` px) peak in it beyond chance (`tiling.border_rule`);
        "on": always; "off": never. Sets `image_border_`; True when it is set."""
        mode = getattr(self.config, "tile_border", "off")
        if self.tiling_ is None or mode == "off":
            return False
        band = 2 * self.extractor.coarse_stride
        if mode == "on" or border_rule(maps, band=band // map_stride):
            self.image_border_ = band
        return bool(self.image_border_)

    def threshold_from_crossfit(
        self, crossed: Sequence[ScoreResult], held_out: Sequence[Sample], *, quantile: float
    ) -> float:
        """Threshold and map floor from normals scored out of fold (`crossed`, batch by batch)
        and `held_out` normals, scored now by this fitted model: the cross-fitted scores raised
        by how far the held-out ones sit above them (`threshold.held_out_shift`: a cross-fit
        that leaves a fold out of the memory only is not wholly out of sample), then the rule
        over both. Returns that shift."""
        stride = thresholds.FLOOR_STRIDE
        scores = torch.cat([r.image_scores for r in crossed]).numpy()
        maps = [torch.cat([r.anomaly_maps[:, ::stride, ::stride] for r in crossed]).numpy()]
        held_scores = np.zeros(0, dtype=np.float32)
        if held_out:
            held = self.score_samples(held_out, keep_maps=True, map_stride=stride)
            assert held.anomaly_maps is not None
            held_scores = held.image_scores
            maps.append(held.anomaly_maps)
        shift = thresholds.held_out_shift(scores, held_scores)
        log.info(
            "threshold from %d cross-fitted normals (raised by %.4g) and %d held out",
            scores.shape[0],
            shift,
            held_scores.shape[0],
        )
        self._threshold_from(
            np.concatenate([scores + shift, held_scores]),
            maps=np.concatenate(maps),
            quantile=quantile,
        )
        return shift

    def _threshold_from_results(
        self,
        results: Sequence[ScoreResult],
        *,
        quantile: float,
        scores: np.ndarray | None = None,
    ) -> float:
        """`_threshold_from` over the normal images scored batch by batch in `results` (their
        image scores replaced by `scores` (N,) when given, e.g. corrected ones)."""
        return self._threshold_from(
            torch.cat([r.image_scores for r in results]).numpy() if scores is None else scores,
            maps=torch.cat(
                [
                    r.anomaly_maps[:, :: thresholds.FLOOR_STRIDE, :: thresholds.FLOOR_STRIDE]
                    for r in results
                ]
            ).numpy(),
            quantile=quantile,
        )

    @property
    def threshold_rule(self) -> str:
        """The rule that sets thresholds from normal scores (`threshold.rule_threshold`): the
        config's `threshold_rule`, 'quantile' for configs without one."""
        return str(getattr(self.config, "threshold_rule", "quantile"))

    def _threshold_from(self, scores: np.ndarray, *, maps: np.ndarray, quantile: float) -> float:
        """Set the threshold from normal images' `scores` (N,) by the config's rule for a
        false-alarm rate of 1 - `quantile` (kept in `calibration_scores_`), and the map floor to
        the median of their anomaly-map values `maps` (any shape)."""
        self.calibration_scores_ = np.asarray(scores, dtype=np.float32).copy()
        self.threshold_ = thresholds.rule_threshold(
            self.calibration_scores_, rule=self.threshold_rule, false_alarm_rate=1.0 - quantile
        )
        self.map_floor_ = thresholds.map_floor(maps)
        return self.threshold_

    def thresholds_at(
        self, rates: Sequence[float] = thresholds.REPORTED_RATES
    ) -> dict[float, float]:
        """Thresholds for fixed false-alarm `rates`, set like the model's own from the normals'
        scores kept at fit (normals only); empty when the model file predates them."""
        if self.calibration_scores_ is None or self.calibration_scores_.size == 0:
            return {}
        return {
            rate: thresholds.rule_threshold(
                self.calibration_scores_, rule=self.threshold_rule, false_alarm_rate=rate
            )
            for rate in rates
        }

    def operating_points(self, scores: DatasetScores) -> dict[str, Any]:
        """What the model's threshold flags on a labelled set (`at_threshold`, with the oracle's
        recall at the same false-alarm rate) and what the thresholds for fixed false-alarm
        rates flag (`at_far`, keyed by the nominal rate, each with its threshold)
        (`dataset_scores.operating_points`)."""
        return dataset_scores.operating_points(self, scores)

    # --- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The model file's dict: the common header, then the subclass's own part."""
        self._check_fitted()
        assert self.image_hw_ is not None
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "config_class": type(self.config).__name__,
            "config": json.dumps(to_dict(self.config)),
            "image_hw": list(self.image_hw_),
            "threshold": self.threshold_,
            "map_floor": self.map_floor_,
            **(
                {}
                if self.tiling_ is None
                else {"tiling": [self.tiling_.tile, self.tiling_.overlap, self.tiling_.pad]}
            ),
            **({} if not self.image_border_ else {"image_border": self.image_border_}),
            "calibration_scores": None
            if self.calibration_scores_ is None
            else torch.from_numpy(self.calibration_scores_),
            **self._state(),
        }

    def save(self, path: Path, *, provenance: dict[str, Any] | None = None) -> Path:
        """Write the fitted detector and its settings to one file, atomically; `provenance`
        (plain values: what wrote it, e.g. `fit` or a federation run and round) goes into the
        header, for the scoring service to report."""
        state = self.state()
        if provenance is not None:
            state["provenance"] = dict(provenance)
        return write_state(state, path)

    def _restore_tiling(self, state: dict[str, Any], *, where: str) -> None:
        """`tiling_` from a model file's ``tiling`` entry (absent: resized), checked."""
        try:
            self.tiling_ = plan_from_state(
                state.get("tiling"), image_hw=state["image_hw"], stride=self.extractor.stride
            )
        except ValueError as err:
            raise ModelFileError(f"{where}: bad tiling entry: {err}") from None
        border = state.get("image_border", 0)
        hw = state["image_hw"]
        if not (
            isinstance(border, int)
            and not isinstance(border, bool)
            and 0 <= border
            and 2 * border < min(hw)
            and (border == 0 or self.tiling_ is not None)
        ):
            raise ModelFileError(f"{where}: bad image_border entry {border!r}")
        self.image_border_ = border
