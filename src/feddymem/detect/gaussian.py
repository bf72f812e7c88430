"""Gaussian baseline (PaDiM-style): one multivariate Gaussian per grid position, Mahalanobis score.

For every position j of the feature grid (P = H * W positions) the patch features p(x)_j of the
normal training images give a mean mu_j (D,) and a covariance Sigma_j + eps * I (D, D). A test
patch scores its Mahalanobis distance sqrt((p - mu_j)^T Sigma_j^-1 (p - mu_j)). Anomaly maps,
image scores, thresholds, evaluation and the model file are the family's (`feddymem.detect.base`).

Tiled (`tile`, `detect/tiling.py`), images keep their native size and the backbone sees
tiles. With `tile_gaussians` "image" the tiles' features are stitched back into one grid per
image (overlaps blended) and there is a Gaussian per position of that native grid, as PaDiM
has for a resized image; with "tile" the grid is a tile's, the Gaussians are shared by every
tile, and the tiles' scores are stitched instead (no absolute position, but a model whose size
does not grow with the image). "auto" keeps the absolute positions unless their precisions
would exceed `tile_gaussian_mb`. The cross-fit folds by image either way (an image's tiles
share a fold); when its fold sums and kept features would pass `crossfit_max_mb` (a native
grid's ten fold models soon do), the fit holds out a tenth instead.

The statistics are streamed (`PatchMoments`: n, sum x, sum x x^T per position), so fitting never
holds all training features at once; the sums also add up exactly across clients.

Numerics: batched `torch.linalg.inv` / `solve` can return garbage on CPU with several threads in
this torch build (environment.md); precisions come from `cholesky` + `cholesky_inverse` only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from feddymem.config import ConfigError, FeatureConfig, check_calibration, from_dict, to_dict
from feddymem.data import Sample
from feddymem.detect import threshold as thresholds
from feddymem.detect.base import Detector, ScoreResult
from feddymem.detect.modelfile import (
    ModelFileError,
    calibration_scores_from_state,
    map_floor_from_state,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GaussianConfig(FeatureConfig):
    """PaDiM-style detector: a Gaussian per grid position over p(x), Mahalanobis patch score."""

    n_features: int | None = None  # random channel subset of p(x) (PaDiM's d); None: all D
    eps: float = 0.01  # shrinkage: Sigma_j + eps * I
    calibration_fraction: float = 0.1  # normal training images held out to set the threshold
    threshold_quantile: float = 0.99
    seed: int = 0  # channel subset and calibration split
    # fed-padim's upload defence (privacy/defences.noisy_features): Gaussian noise of norm about
    # this x the spread of the patch vectors, added to every patch vector before it enters the
    # moments a site sends (`local_moments`); 0: exact moments
    moment_noise: float = 0.0
    # "crossfit": the threshold also from every training image scored against the Gaussians
    # of the moments without its fold (`calibration_folds` folds; exact, since moments are
    # sums: pooled minus the fold's), beside the held-out share; "holdout": that share alone
    calibration: Literal["holdout", "crossfit"] = "holdout"
    calibration_folds: int = 3
    # tiled: "image": a Gaussian per position of the native image (its tiles' features
    # stitched first); "tile": per position within a tile, shared by every tile; "auto":
    # "image" when its precisions fit in `tile_gaussian_mb`, else "tile"
    tile_gaussians: Literal["auto", "image", "tile"] = "auto"
    tile_gaussian_mb: float = 1024.0  # the fit peaks near 5x this (float64 sums, features)
    # the cross-fit keeps a float64 sum of outer products per fold and the images' features:
    # past this (a third of the 24 GB a site's machine is taken to have), hold out instead
    crossfit_max_mb: float = 8192.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tile_gaussians not in ("auto", "image", "tile"):
            raise ConfigError(
                f"tile_gaussians must be 'auto', 'image' or 'tile', got {self.tile_gaussians!r}"
            )
        for name in ("tile_gaussian_mb", "crossfit_max_mb"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.n_features is not None and self.n_features < 1:
            raise ConfigError(f"n_features must be >= 1 or unset, got {self.n_features}")
        if not self.eps > 0.0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if not 0.0 <= self.calibration_fraction < 0.9:
            raise ConfigError("calibration_fraction must be in [0, 0.9)")
        if not 0.5 <= self.threshold_quantile <= 1.0:
            raise ConfigError("threshold_quantile must be in [0.5, 1]")
        if not (math.isfinite(self.moment_noise) and self.moment_noise >= 0.0):
            raise ConfigError(f"moment_noise must be a finite number >= 0, got {self.moment_noise}")
        check_calibration(self.calibration, self.calibration_folds)


# a central PaDiM's cross-fit (`central_config`): a fold's Gaussians are the moments minus the
# fold's (exact, no refit), so folds are cheap and the usual ten leave each fold's model nine
# tenths of the normals
CENTRAL_CROSSFIT_FOLDS = 10


def central_config(
    model: FeatureConfig,
    *,
    calibration: Literal["holdout", "crossfit"] = "crossfit",
    calibration_folds: int | None = None,
    threshold_quantile: float = 0.98,
    seed: int | None = None,
) -> GaussianConfig:
    """PaDiM fitted at one site on its own images (`feddymem fit`, the default detector), on
    `model`'s features and seed: cross-fitted in CENTRAL_CROSSFIT_FOLDS folds with no tenth held
    out (every training image is in the Gaussians and scored once out of its fold, as
    PatchCore's cross-fit), or with `calibration="holdout"` the held-out tenth; 2 % nominal
    false alarms, as PatchCore's default (docs/detector.md, PaDiM against the criterion);
    `seed` overrides the model's."""
    crossfit = calibration == "crossfit"
    return gaussian_config_like(
        model,
        seed=getattr(model, "seed", 0) if seed is None else seed,
        calibration=calibration,
        calibration_folds=CENTRAL_CROSSFIT_FOLDS
        if calibration_folds is None
        else calibration_folds,
        calibration_fraction=0.0 if crossfit else GaussianConfig.calibration_fraction,
        threshold_quantile=threshold_quantile,
    )


# the stream of `privacy.defences.defence_seed` that seeds fed-padim's moment noise (FedDyMem's
# upload noise is stream 0)
MOMENT_NOISE_STREAM = 7


def gaussian_config_like(model: FeatureConfig, **overrides: Any) -> GaussianConfig:
    """The Gaussian detector's settings with `model`'s feature settings and seed (any config
    that shares FeatureConfig's fields, e.g. a FedDyMemConfig), then `overrides`."""
    shared = set(FeatureConfig.__dataclass_fields__)
    values = {k: v for k, v in to_dict(model).items() if k in shared}
    return from_dict(
        GaussianConfig,
        {**values, "seed": getattr(model, "seed", 0), **overrides},
        where="gaussian",
    )


# --- pure pieces -------------------------------------------------------------------------------


def noisy_moment_features(
    feats: torch.Tensor, config: GaussianConfig, *, batch: int, noise_key: int = 0
) -> torch.Tensor:
    """Patch features (B, D, H, W) as they enter the moments a site sends: with
    `config.moment_noise` > 0, plus Gaussian noise of norm about that x the spread of the
    batch's patch vectors (`privacy.defences.noisy_features`), seeded by the config's seed, the
    batch's index in a stream of its own and the site's secret `noise_key`; else unchanged."""
    if config.moment_noise <= 0:
        return feats
    from feddymem.privacy import defences  # the upload defences live with the privacy code

    seed = defences.defence_seed(config.seed, batch, MOMENT_NOISE_STREAM, key=noise_key)
    return defences.noisy_features(feats, relative_std=config.moment_noise, seed=seed)


def select_channels(n_channels: int, n_features: int | None, *, seed: int) -> torch.Tensor | None:
    """Seeded random subset of `n_features` of `n_channels` channel indices, ascending, (d,).

    None when every channel is kept (`n_features` None or equal to `n_channels`).
    """
    if n_features is None or n_features == n_channels:
        return None
    if not 1 <= n_features <= n_channels:
        raise ValueError(f"n_features must be in [1, {n_channels}] (D of p(x)), got {n_features}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_channels, generator=gen)[:n_features].sort().values


# positions per chunk of `PatchMoments.gaussians` (152 channels: 94 MB of float64 a chunk)
GAUSSIAN_CHUNK = 512


class PatchMoments:
    """Streaming sufficient statistics of patch features, per grid position, in float64.

    `count` images, `total` = sum x (P, D), `outer` = sum x x^T (P, D, D), P = H * W.
    """

    def __init__(self) -> None:
        self.count = 0
        self.grid_hw: tuple[int, int] | None = None
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of patch features (B, D, H, W); every batch must share D, H and W."""
        if features.ndim != 4:
            raise ValueError(f"features must be (B, D, H, W), got {tuple(features.shape)}")
        b, d, h, w = features.shape
        x = features.detach().flatten(2).permute(2, 0, 1).to(torch.float64)  # (P, B, D)
        if self.total is None or self.outer is None:
            self.grid_hw = (h, w)
            self.total = torch.zeros(h * w, d, dtype=torch.float64)
            self.outer = torch.zeros(h * w, d, d, dtype=torch.float64)
        elif self.total.shape != (h * w, d):
            raise ValueError(
                f"features (D={d}, H={h}, W={w}) do not match earlier batches "
                f"(D={self.total.shape[1]}, grid {self.grid_hw})"
            )
        self.total += x.sum(dim=1)
        self.outer.baddbmm_(x.mT, x)
        self.count += b

    @classmethod
    def from_sums(
        cls, count: int, total: torch.Tensor, outer: torch.Tensor, grid_hw: tuple[int, int]
    ) -> PatchMoments:
        """Moments from their three sums (what a fed-padim site sends), checked for shape."""
        p, d = total.shape
        if grid_hw[0] * grid_hw[1] != p or outer.shape != (p, d, d) or count < 1:
            raise ValueError(
                f"moments do not fit: count {count}, total {tuple(total.shape)}, outer "
                f"{tuple(outer.shape)}, grid {grid_hw}"
            )
        moments = cls()
        moments.count, moments.grid_hw = int(count), grid_hw
        moments.total, moments.outer = total.to(torch.float64), outer.to(torch.float64)
        return moments

    @classmethod
    def pooled(cls, parts: Sequence[PatchMoments]) -> PatchMoments:
        """The moments of the union of the parts' images: counts and sums added (exact)."""
        filled = [m for m in parts if m.total is not None and m.outer is not None]
        if not filled:
            raise ValueError("no moments to pool")
        first = filled[0]
        assert first.grid_hw is not None and first.total is not None and first.outer is not None
        total, outer = first.total.clone(), first.outer.clone()
        for m in filled[1:]:
            assert m.total is not None and m.outer is not None
            if m.grid_hw != first.grid_hw or m.total.shape != total.shape:
                raise ValueError(
                    f"moments of grid {m.grid_hw} and {first.grid_hw} (or of other channel "
                    "counts) cannot be pooled: every site needs the same input size"
                )
            total += m.total
            outer += m.outer
        return cls.from_sums(sum(m.count for m in filled), total, outer, first.grid_hw)

    def minus(self, part: PatchMoments) -> PatchMoments:
        """The moments without `part`'s images (which must be among these): counts and sums
        subtracted, exact as pooling is."""
        if self.total is None or self.outer is None or self.grid_hw is None:
            raise ValueError("no moments to subtract from")
        if part.total is None or part.outer is None or part.total.shape != self.total.shape:
            raise ValueError("the part's moments do not match these")
        return PatchMoments.from_sums(
            self.count - part.count,
            self.total - part.total,
            self.outer - part.outer,
            self.grid_hw,
        )

    def mean_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (P, D) and unbiased covariances (P, D, D), float64; needs two images or more."""
        if self.total is None or self.outer is None or self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        return _mean_covariance(self.count, self.total, self.outer)

    def gaussians(
        self, *, eps: float, chunk: int = GAUSSIAN_CHUNK
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (P, D) and precisions (Sigma + eps * I)^-1 (P, D, D), float32, computed
        `chunk` positions at a time: the float64 covariances and Cholesky factors are a chunk's,
        so a large grid's fit holds little more than its sums and the result."""
        if self.total is None or self.outer is None or self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        p, d = self.total.shape
        mean = (self.total / self.count).float()
        precision = torch.empty(p, d, d, dtype=torch.float32)
        for start in range(0, p, chunk):  # a loop over chunks of positions, not over positions
            part = slice(start, start + chunk)
            _, cov = _mean_covariance(self.count, self.total[part], self.outer[part])
            precision[part] = regularised_precision(cov, eps=eps)
        return mean, precision


def _mean_covariance(
    count: int, total: torch.Tensor, outer: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and unbiased covariances (float64) of `count` vectors from their sums."""
    mean = total / count
    # (outer - n mean mean^T) / (n - 1), then symmetrised: one (P, D, D) copy and one temporary
    cov = torch.baddbmm(outer, mean.unsqueeze(2), mean.unsqueeze(1), alpha=-count)
    cov.div_(count - 1)
    return mean, cov.add_(cov.mT.clone()).mul_(0.5)


def regularised_precision(covariance: torch.Tensor, *, eps: float) -> torch.Tensor:
    """(P, D, D) covariances -> (P, D, D) inverses of (Sigma + eps * I), same dtype.

    Batched through Cholesky (`cholesky_ex` + `cholesky_inverse`) in float64: batched LU-based
    inverses are unreliable on this CPU build (environment.md).
    """
    if covariance.ndim != 3 or covariance.shape[1] != covariance.shape[2]:
        raise ValueError(f"covariance must be (P, D, D), got {tuple(covariance.shape)}")
    sigma = covariance.to(torch.float64, copy=True)
    sigma.diagonal(dim1=1, dim2=2).add_(eps)
    chol, info = torch.linalg.cholesky_ex(sigma)
    del sigma
    bad = int((info != 0).sum())
    if bad:
        raise ValueError(
            f"{bad} of {covariance.shape[0]} covariance(s) are not positive definite with eps={eps}; "
            "raise eps"
        )
    # cholesky_inverse fills both triangles from one: the result is exactly symmetric
    return torch.cholesky_inverse(chol).to(covariance.dtype)


def estimate_gaussian(features: torch.Tensor, *, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position Gaussian of training features (N, D, H, W): mean (P, D), precision (P, D, D).

    float32 results; precision = (Sigma + eps * I)^-1 with the unbiased covariance Sigma.
    """
    moments = PatchMoments()
    moments.update(features)
    return moments.gaussians(eps=eps)


def mahalanobis(
    features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor
) -> torch.Tensor:
    """Mahalanobis distance of every patch to its position's Gaussian.

    features (B, D, H, W), mean (P, D), precision (P, D, D) with P = H * W -> (B, H, W).
    One batched matrix product over positions; no loop.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, D, H, W), got {tuple(features.shape)}")
    b, d, h, w = features.shape
    if mean.shape != (h * w, d) or precision.shape != (h * w, d, d):
        raise ValueError(
            f"features (D={d}, grid {h}x{w}) do not match the Gaussians: mean "
            f"{tuple(mean.shape)}, precision {tuple(precision.shape)}"
        )
    delta = (
        features.flatten(2).permute(2, 0, 1).to(precision.dtype) - mean.unsqueeze(1)
    ).contiguous()
    squared = torch.einsum("pbd,pbd->pb", torch.bmm(delta, precision), delta)  # (P, B)
    return squared.clamp_min(0.0).sqrt().T.reshape(b, h, w)


# --- detector ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalMoments:
    """A site's training moments, with the split they came from and the input size."""

    moments: PatchMoments
    train: tuple[Sample, ...]
    calib: tuple[Sample, ...]
    image_hw: tuple[int, int]
    # calibration "crossfit": each fold's share of `moments` (image j of the stream is in fold
    # j % folds) and the images' clean patch features (N, d, H, W) float16, to score them (N
    # rows per image's tiles when the Gaussians are a tile's)
    folds: tuple[PatchMoments, ...] = ()
    features: torch.Tensor | None = None


class GaussianDetector(Detector):
    """PaDiM-style detector fitted on normal images (see the module docstring).

    Fitted state: `mean_` (P, d), `precision_` (P, d, d), `channels_` (d,) long or None (all
    channels), `grid_hw_` (H, W), `image_hw_` (H_in, W_in), `n_train_`, `threshold_`.
    """

    kind = "gaussian"
    config: GaussianConfig
    # tiled: Gaussians of the stitched native grid, or of a tile's positions shared by every
    # tile (`tile_gaussians_`; the module docstring)
    supports_tiling = True

    def __init__(self, config: GaussianConfig, *, weights: Path | None = None) -> None:
        super().__init__(config, weights=weights)
        self.mean_: torch.Tensor | None = None
        self.precision_: torch.Tensor | None = None
        self.channels_: torch.Tensor | None = None
        self.grid_hw_: tuple[int, int] | None = None
        self.n_train_: int | None = None
        # how the threshold was set: the cross-fit's folds (0: held out) and the shift its
        # scores were raised by (`_crossfit_threshold`)
        self.calibration_folds_ = 0
        self.calibration_shift_ = 0.0
        # tiled: "image" (a Gaussian per position of the stitched native grid) or "tile"
        self.tile_gaussians_: str | None = None

    def _is_fitted(self) -> bool:
        return self.mean_ is not None and self.precision_ is not None

    def fit(
        self, samples: Sequence[Sample], *, progress: Callable[[int], None] | None = None
    ) -> GaussianDetector:
        """Fit the per-position Gaussians on normal samples (labels must all be 0)."""
        split = self.local_moments(samples, progress=progress)
        return self.fit_moments(split)

    def local_moments(
        self,
        samples: Sequence[Sample],
        *,
        progress: Callable[[int], None] | None = None,
        image_hw: tuple[int, int] | None = None,
        noise_key: int = 0,
    ) -> LocalMoments:
        """The moments of this site's training normals (after holding out its calibration
        share), at `image_hw` (default: resolved from the images as `fit` does); with
        `moment_noise`, of their noised patch vectors (`noisy_moment_features`, seeded with the
        site's secret `noise_key` too)."""
        cfg = self.config
        n_folds = cfg.calibration_folds if cfg.calibration == "crossfit" else 0
        fraction = cfg.calibration_fraction
        train, calib, resolved = self._fit_split(
            samples, fraction=fraction, seed=cfg.seed, min_images=1
        )
        if image_hw is not None and self.tiling_ is not None:
            raise ValueError("moments at a given image size are of whole images: set tile='off'")
        image_hw = image_hw or resolved
        channels = select_channels(self.extractor.out_channels, cfg.n_features, seed=cfg.seed)
        width = self.extractor.out_channels if channels is None else int(channels.numel())
        self.tile_gaussians_ = self._choose_tile_gaussians(width)
        need_mb = self._crossfit_mb(len(train), image_hw, n_folds, width)
        if n_folds and need_mb > cfg.crossfit_max_mb:
            n_folds, fraction = 0, fraction or GaussianConfig.calibration_fraction
            log.warning(
                "the cross-fit would hold %.0f MB (%d folds' sums and the images' features; "
                "limit %.0f MB): the threshold comes from a held-out %.0f%% of the normals",
                need_mb,
                cfg.calibration_folds,
                cfg.crossfit_max_mb,
                100 * fraction,
            )
            # the size and tile plan stay as chosen: only the held-out share is new
            train, calib = thresholds.split_calibration(samples, fraction=fraction, seed=cfg.seed)
        # rows of a feature batch per image: a tile each with Gaussians per tile position
        per_image = self._tiles_per_row_image()
        moments = PatchMoments()
        folds = [PatchMoments() for _ in range(n_folds)]
        kept: list[torch.Tensor] = []
        seen = 0
        batches = self._train_features(train, image_hw=image_hw, progress=progress)
        for i, feats in enumerate(batches):
            feats = feats if channels is None else feats[:, channels]
            noisy = noisy_moment_features(feats, cfg, batch=i, noise_key=noise_key)
            if not n_folds:
                moments.update(noisy)
            else:  # the whole is the folds' sum, added once at the end
                rows = torch.arange(seen, seen + feats.shape[0])
                label = (rows // per_image % n_folds).tolist()  # an image's rows share a fold
                for f in set(label):  # a loop over the folds of this batch
                    folds[f].update(noisy[torch.tensor(label) == f])
                kept.append(feats.half())
            seen += feats.shape[0]
        if n_folds and any(f.count for f in folds):
            moments = PatchMoments.pooled(folds)
        usable = n_folds and all(f.count for f in folds) and seen - max(f.count for f in folds) >= 2
        return LocalMoments(
            moments,
            tuple(train),
            tuple(calib),
            image_hw,
            folds=tuple(folds) if usable else (),
            features=torch.cat(kept) if usable else None,
        )

    def _tiles_per_row_image(self) -> int:
        """Feature rows per image: its tiles with Gaussians per tile position, else 1."""
        if self.tiling_ is None or self.tile_gaussians_ != "tile":
            return 1
        return self.tiling_.grid(self.extractor.stride).n_tiles

    def _crossfit_mb(self, n_images: int, image_hw: tuple[int, int], n_folds: int, d: int) -> float:
        """MB the cross-fit holds beside the model: a float64 sum of outer products of `d`
        channels per fold and every training image's features in float16 (per tile, with
        tile Gaussians)."""
        stride = self.extractor.stride
        rows = n_images * self._tiles_per_row_image()
        if self.tiling_ is not None and self.tile_gaussians_ == "tile":
            p = (self.tiling_.tile // stride) ** 2
        else:
            p = (image_hw[0] // stride) * (image_hw[1] // stride)
        return (n_folds * p * d * d * 8 + rows * p * d * 2) / 2**20

    def _choose_tile_gaussians(self, d: int) -> str | None:
        """Tiled: the config's `tile_gaussians`, "auto" resolved by the size of the native
        grid's precisions of `d` channels."""
        cfg = self.config
        if self.tiling_ is None:
            return None
        stride = self.extractor.stride
        h, w = (side // stride for side in self.tiling_.image_hw)
        image_mb = h * w * d * d * 4 / 2**20
        choice = cfg.tile_gaussians
        if choice == "auto":
            choice = "image" if image_mb <= cfg.tile_gaussian_mb else "tile"
        log.info(
            "tiled PaDiM: a Gaussian per position of the %s (the image's %d x %d positions "
            "would take %.0f MB of precisions; limit %.0f MB)",
            "native image" if choice == "image" else "tile, shared by every tile",
            h,
            w,
            image_mb,
            cfg.tile_gaussian_mb,
        )
        return choice

    def _stitched(self) -> bool:
        return self.tiling_ is not None and self.tile_gaussians_ == "image"

    def _tile_features(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """As the base's; with Gaussians per native position, the tiles' features stitched
        into one grid per image (B, D, H, W)."""
        if not self._stitched():
            yield from super()._tile_features(images)
            return
        yield self._stitched_features(images)

    def _stitched_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> p(x) of their tiles, in batches of `batch_size` tiles,
        stitched into one grid per image (overlaps blended as scores are)."""
        assert self.tiling_ is not None
        stride = self.extractor.stride
        tiles = self.tiling_.cut(images, stride)
        feats = torch.cat([self.features(part) for part in tiles.split(self.config.batch_size)])
        return self.tiling_.stitch(feats, stride)

    def image_patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """As the base's; with Gaussians per native position, scored on the stitched grid."""
        if not self._stitched():
            return super().image_patch_scores(images)
        assert self.mean_ is not None and self.precision_ is not None
        feats = self._stitched_features(images)
        if self.channels_ is not None:
            feats = feats[:, self.channels_]
        return mahalanobis(feats, self.mean_, self.precision_)

    def fit_pooled(
        self, samples: Sequence[Sample], pooled: PatchMoments, *, image_hw: tuple[int, int]
    ) -> GaussianDetector:
        """fed-padim's site model: the Gaussians of the `pooled` moments at the federation's
        `image_hw`, the threshold from this site's own held-out share of `samples` (and, with
        calibration "crossfit", from its training images against `pooled` without their fold:
        the site's moments are recomputed, exactly as it sent them, to subtract)."""
        cfg = self.config
        if cfg.calibration == "crossfit":
            # this site's own moments again, by fold: its share of `pooled`, to leave out
            own = self.local_moments(samples, image_hw=image_hw)
            return self.fit_moments(own, pooled)
        train, calib, _ = self._fit_split(
            samples, fraction=cfg.calibration_fraction, seed=cfg.seed, min_images=1
        )
        return self.fit_moments(LocalMoments(pooled, tuple(train), tuple(calib), image_hw), pooled)

    def fit_moments(
        self, split: LocalMoments, pooled: PatchMoments | None = None
    ) -> GaussianDetector:
        """Fit from moments: this site's own (`split.moments`) or `pooled` ones (fed-padim: the
        sum over the sites); the threshold from this site's held-out normals."""
        cfg = self.config
        moments = pooled or split.moments
        train, calib, image_hw = list(split.train), list(split.calib), split.image_hw
        channels = select_channels(self.extractor.out_channels, cfg.n_features, seed=cfg.seed)
        self.mean_, self.precision_ = moments.gaussians(eps=cfg.eps)
        assert moments.grid_hw is not None
        self.channels_ = channels
        self.grid_hw_ = moments.grid_hw
        self.image_hw_ = image_hw
        self.n_train_ = moments.count
        log.info(
            "gaussian: %d images, %d positions x %d channels",
            self.n_train_,
            self.mean_.shape[0],
            self.mean_.shape[1],
        )
        if split.folds and split.features is not None:
            self._crossfit_threshold(split, moments)
        else:
            self._set_threshold(train, calib, quantile=cfg.threshold_quantile)
        return self

    def _crossfit_threshold(self, split: LocalMoments, moments: PatchMoments) -> None:
        """Threshold and map floor from this site's training images, each scored against the
        Gaussians of `moments` without its fold (`PatchMoments.minus`), with its held-out
        images (`threshold_from_crossfit`). Tiled, the border rule is decided first from the
        same out-of-fold maps, as `calibrate` decides it from held-out ones."""
        cfg = self.config
        assert split.features is not None
        per_image = self._tiles_per_row_image()
        label = torch.arange(split.features.shape[0]) // per_image % len(split.folds)
        grids = []  # out-of-fold patch scores, one grid per image
        for f, part in enumerate(split.folds):
            mean, precision = moments.minus(part).gaussians(eps=cfg.eps)
            for chunk in split.features[label == f].split(cfg.batch_size * per_image):
                scores = mahalanobis(chunk.float(), mean, precision)
                if per_image > 1:  # whole images' tiles: stitched as scoring stitches them
                    assert self.tiling_ is not None
                    scores = self.tiling_.stitch(scores, self.extractor.stride)
                grids.append(scores)
        results = [self.result_from_patch_scores(g) for g in grids]
        if self.tiling_ is not None:
            stride = thresholds.FLOOR_STRIDE
            self.image_border_ = 0
            maps = torch.cat([r.anomaly_maps[:, ::stride, ::stride] for r in results]).numpy()
            if self._decide_border(maps, map_stride=stride):  # the maps stay; scores move
                results = [
                    ScoreResult(self._image_scores(g, r.anomaly_maps), r.anomaly_maps)
                    for g, r in zip(grids, results, strict=True)
                ]
        self.calibration_folds_ = len(split.folds)
        self.calibration_shift_ = self.threshold_from_crossfit(
            results, list(split.calib), quantile=cfg.threshold_quantile
        )

    def score_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in), already checked -> patch scores (B, H, W)."""
        assert self.mean_ is not None and self.precision_ is not None
        feats = self.extractor(images)
        if self.channels_ is not None:
            feats = feats[:, self.channels_]
        scores = mahalanobis(feats, self.mean_, self.precision_)
        return scores

    # --- persistence -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        assert self.image_hw_ is not None and self.grid_hw_ is not None
        return {
            "mean": self.mean_,
            "precision": self.precision_,
            "channels": self.channels_,
            "grid_hw": list(self.grid_hw_),
            "n_train": self.n_train_,
            **({} if self.tile_gaussians_ is None else {"tile_gaussians": self.tile_gaussians_}),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, weights: Path | None = None, where: str = "state"
    ) -> GaussianDetector:
        """Rebuild a detector from `state()` (what `load_detector` calls for kind 'gaussian')."""
        try:
            config = from_dict(GaussianConfig, json.loads(state["config"]), where=where)
            det = cls(config, weights=weights)
            mean, precision = state["mean"].float(), state["precision"].float()
            grid_hw = (int(state["grid_hw"][0]), int(state["grid_hw"][1]))
            image_hw = (int(state["image_hw"][0]), int(state["image_hw"][1]))
            channels = state["channels"]
            threshold, n_train = state["threshold"], state["n_train"]
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as err:
            raise ModelFileError(f"{where}: not a valid gaussian model ({err!r})") from err
        p, d = grid_hw[0] * grid_hw[1], mean.shape[-1]
        if mean.shape != (p, d) or precision.shape != (p, d, d):
            raise ModelFileError(
                f"{where}: mean {tuple(mean.shape)} / precision {tuple(precision.shape)} do not "
                f"fit a {grid_hw} grid"
            )
        det.mean_, det.precision_ = mean, precision
        det.channels_ = None if channels is None else channels.long()
        det.grid_hw_, det.image_hw_ = grid_hw, image_hw
        det.threshold_ = None if threshold is None else float(threshold)
        det.map_floor_ = map_floor_from_state(state, where=where)
        det.calibration_scores_ = calibration_scores_from_state(state, where=where)
        det.n_train_ = None if n_train is None else int(n_train)
        det._restore_tiling(state, where=where)
        positions = state.get("tile_gaussians", None if det.tiling_ is None else "tile")
        if positions not in ((None,) if det.tiling_ is None else ("image", "tile")):
            raise ModelFileError(f"{where}: bad tile_gaussians entry {positions!r}")
        det.tile_gaussians_ = positions
        return det
