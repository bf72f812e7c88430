"""Typed configuration trees, validated once and written next to every result.

`DetectorConfig` drives the centralised PatchCore-style detector; `FedDyMemConfig` drives one
FedDyMem client and the server's aggregation. Both are frozen dataclasses that round-trip through
plain dicts (JSON / TOML), so a number can always be traced back to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def from_dict(cls: type[T], values: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass `cls` from `values`, refusing unknown keys (a typo must not pass silently)."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; known: {sorted(names)}")
    # Every sequence-valued option is a tuple; JSON and TOML give lists.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (tuples become lists, for JSON and TOML)."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_rule(rule: str) -> None:
    """A threshold rule `feddymem.detect.threshold.rule_threshold` knows."""
    _check(
        rule in ("quantile", "genpareto"),
        f"threshold_rule must be 'quantile' or 'genpareto', got {rule!r}",
    )


def check_calibration(calibration: str | None, folds: int, *, unset: bool = False) -> None:
    """A threshold calibration the detectors know ("holdout", "crossfit"; None as well when
    `unset` may stand for a method's default) with at least two cross-fit folds."""
    known = ("holdout", "crossfit", None) if unset else ("holdout", "crossfit")
    _check(
        calibration in known,
        f"calibration must be 'holdout' or 'crossfit'{' or unset' if unset else ''}, "
        f"got {calibration!r}",
    )
    _check(folds >= 2, f"calibration_folds must be >= 2, got {folds}")


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """Which frozen backbone and which taps give the patch features p(x) of shape (B, D, H, W)."""

    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] | None = None  # None: the backbone's default taps
    image_size: int = 256  # short side in pixels
    keep_aspect: bool = True  # keep the data set's aspect ratio instead of squashing to a square
    batch_size: int = 16
    # Image score: 'max' of the anomaly map, or 'topk' = the mean of the highest
    # `topk_fraction` of the patch scores (steadier than a single patch on ELPV).
    image_score: Literal["max", "topk"] = "topk"
    topk_fraction: float = 0.02
    blur_sigma: float = 4.0  # Gaussian blur of the anomaly maps, in input pixels
    # Tiled scoring (detect/tiling.py): "off" resizes every image to `image_size`; "on" cuts
    # images kept at `tile_scale` x their native size into overlapping `image_size` tiles;
    # "auto" tiles when resizing would shrink the short side more than 1.5x (the rule in
    # tiling.choose_tiling, from the training images' sizes only)
    tile: Literal["off", "auto", "on"] = "off"
    tile_scale: float = 1.0
    tile_overlap: int | None = None  # pixels; None: four cells of the coarsest tap
    # pixels the image is mirrored outwards before tiling, a multiple of 32; None: the
    # overlap rounded down to 32 (edge cells seen from inside a tile, as seams are); 0: none
    tile_pad: int | None = None
    # tiled: whether the image score leaves out the image's edge band (two coarse cells);
    # "auto": when the held-out normals' maps peak there beyond chance (tiling.border_rule)
    tile_border: Literal["auto", "on", "off"] = "auto"
    tile_max_megapixels: float = 32.0  # larger images are shrunk to this before tiling

    def __post_init__(self) -> None:
        _check(
            0.0 < self.topk_fraction <= 1.0,
            f"topk_fraction must be in (0, 1], got {self.topk_fraction}",
        )
        _check(
            32 <= self.image_size <= 2048,
            f"image_size must be in [32, 2048], got {self.image_size}",
        )
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(
            math.isfinite(self.blur_sigma) and self.blur_sigma >= 0,
            f"blur_sigma must be a finite number >= 0, got {self.blur_sigma}",
        )
        _check(
            self.tile in ("off", "auto", "on"),
            f"tile must be 'off', 'auto' or 'on', got {self.tile!r}",
        )
        _check(
            0.05 <= self.tile_scale <= 4.0,
            f"tile_scale must be in [0.05, 4], got {self.tile_scale}",
        )
        _check(
            self.tile_overlap is None or 0 <= self.tile_overlap <= self.image_size // 2,
            f"tile_overlap must be in [0, image_size / 2], got {self.tile_overlap}",
        )
        _check(
            self.tile_pad is None
            or (0 <= self.tile_pad < self.image_size and self.tile_pad % 32 == 0),
            f"tile_pad must be a multiple of 32 in [0, image_size), got {self.tile_pad}",
        )
        _check(
            self.tile_border in ("auto", "on", "off"),
            f"tile_border must be 'auto', 'on' or 'off', got {self.tile_border!r}",
        )
        _check(
            0.1 <= self.tile_max_megapixels <= 1024,
            f"tile_max_megapixels must be in [0.1, 1024], got {self.tile_max_megapixels}",
        )


@dataclass(frozen=True, kw_only=True)
class DetectorConfig(FeatureConfig):
    """PatchCore-style detector: memory bank of patch features, k-NN scoring."""

    sampler: Literal["greedy", "random", "none"] = "greedy"
    coreset_ratio: float = 0.01
    projection_dim: int = 128  # random projection used only for coreset selection
    num_neighbors: int = 1  # k of the patch score (distance to the nearest memory item)
    calibration_fraction: float = 0.1  # normal training images held out to set the threshold
    # once the threshold is set, rebuild the memory bank with the held-out images in it
    refit_with_calibration: bool = False
    # "crossfit" (the default): every training image scored against a bank built without its
    # fold (`calibration_folds` folds), then the bank built from all of them; "holdout": the
    # threshold from `calibration_fraction` of the normals, kept out of the bank (tiled fits
    # always hold out: cross-fitting needs one grid per image). Chosen by the criterion of
    # docs/detector.md "The operating point"; three folds keep the fit within 3x the holdout's.
    calibration: Literal["holdout", "crossfit"] = "crossfit"
    calibration_folds: int = 3
    # "size": a fold's scores come from a bank of (folds-1)/folds of the normals, the fitted
    # bank holds them all, so new normals score lower; each training image is also scored
    # against one other fold's bank and its score carried to the whole bank's size by the
    # power law of nearest-neighbour distances in the bank's size (`threshold.size_corrected`,
    # needs three folds or more); "none": the cross-fitted scores as they are
    crossfit_correction: Literal["none", "size"] = "none"
    # scale each tapped stage so its channels have the same mean variance over the training
    # patches (fitted, saved with the model); off: the taps' raw scales, as PatchCore
    tap_balance: bool = False
    # the threshold aims at 1 - threshold_quantile false alarms (nominal 2%), set from the
    # calibration normals' scores by `threshold_rule` ("quantile": their empirical quantile;
    # "genpareto": a generalised Pareto fit to their upper tail), feddymem.detect.threshold
    threshold_quantile: float = 0.98
    threshold_rule: Literal["quantile", "genpareto"] = "quantile"
    knn_backend: Literal["faiss", "torch"] = "torch"
    # tiled fits: the bank before the coreset holds at most this many patch vectors, drawn
    # uniformly (seeded) from every tile's patches; the coreset keeps coreset_ratio of them
    tile_bank_patches: int = 1 << 18
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            0.0 < self.coreset_ratio <= 1.0,
            f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}",
        )
        _check(self.num_neighbors >= 1, "num_neighbors must be >= 1")
        _check(0.0 <= self.calibration_fraction < 0.9, "calibration_fraction must be in [0, 0.9)")
        _check(0.5 <= self.threshold_quantile <= 1.0, "threshold_quantile must be in [0.5, 1]")
        _check_rule(self.threshold_rule)
        check_calibration(self.calibration, self.calibration_folds)
        _check(
            self.crossfit_correction in ("none", "size"),
            f"crossfit_correction must be 'none' or 'size', got {self.crossfit_correction!r}",
        )
        _check(
            self.crossfit_correction == "none" or self.calibration_folds >= 3,
            "crossfit_correction 'size' needs calibration_folds >= 3 (two bank sizes besides "
            "the whole)",
        )
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.tile_bank_patches >= 1024, "tile_bank_patches must be >= 1024")
        _check(
            self.tile != "on" or not self.refit_with_calibration,
            "tiling works without refit_with_calibration (refit reshapes per-image banks)",
        )
        _check(
            not (self.calibration == "crossfit" and self.refit_with_calibration),
            "refit_with_calibration applies to holdout calibration (crossfit builds the bank "
            "from every training image already)",
        )


@dataclass(frozen=True, kw_only=True)
class FedDyMemConfig(FeatureConfig):
    """One FedDyMem client (generator, metric loss, dynamic memory, memory-reduce) and the server.

    Symbols follow method.md: G_k the memory generator, M_k the client's reduced memory,
    M_g the global memory, K / J / r / alpha / nu the metric-loss constants.
    Each of the five parts can be switched off for ablations.
    """

    # --- the five parts (ablation switches) ---
    generator: bool = True  # False: z(x) = p(x), no trainable G_k
    metric_loss: bool = True  # False: G_k is never trained
    dynamic_memory: bool = True  # False: M_k is built once in round 0 and never rebuilt
    # coreset (default): greedy k-center, keeps rare normal patterns; kmeans: cluster means;
    # position_average: the paper's per-position weighted average; none: raw sample (ablation)
    memory_reduce: Literal["position_average", "kmeans", "coreset", "none"] = "coreset"
    # kmeans (the paper): weighted k-means of the uploads' union to global_memory_size items;
    # union: every accepted item as uploaded, no merge (M_g grows with the sites); mean: ablation
    server_aggregation: Literal["kmeans", "mean", "union"] = "kmeans"
    # --- memory generator (CoordConv 1x1) ---
    gamma_d: int = 1  # d = D / gamma_d
    generator_init: Literal["identity", "random"] = "identity"
    # --- memory sizes ---
    client_memory_size: int = 4096  # items per client bank after reduce (coreset, kmeans, none)
    gamma_c: int = 1  # position_average: optional local k-means to H*W / gamma_c items
    global_memory_size: int | None = None  # C; None: the size of one client bank
    kmeans_iterations: int = 15
    # --- metric loss (CFA soft-boundary hypersphere) ---
    loss_k: int = 3  # K nearest for attraction
    loss_j: int = 3  # J hard negatives for repulsion
    radius: float = 1e-5  # r
    margin: float = 0.1  # alpha
    nu: float = 1e-3
    lr: float = 1e-3
    weight_decay: float = 5e-4
    local_epochs: int = 1
    train_batch_size: int = 8
    # --- wire: M_k and M_g vectors travel in this dtype (decoded to float32 on receipt); "pq":
    # product-quantised by faiss, `wire_pq_subdim` values per sub-vector, 2**`wire_pq_bits`
    # centres per sub-space, the codebook in float16; "sq8" / "sq4": faiss's scalar quantiser,
    # 8 or 4 bits a value between each dimension's minimum and maximum (federation/compress.py)
    wire_dtype: Literal["float32", "float16", "pq", "sq8", "sq4"] = "float32"
    wire_pq_subdim: int = 4
    wire_pq_bits: int = 6
    # --- inference ---
    # memory a site scores against: M_g alone (the paper), or M_g and the site's own last M_k
    score_memory: Literal["global", "global+own"] = "global"
    scoring: Literal["nearest", "softmin"] = "nearest"
    score_k: int = 3
    # each site's threshold after the last round: from its own held-out normals scored against
    # M_g, by the detector's rule (DetectorConfig.threshold_quantile / threshold_rule)
    threshold_quantile: float = 0.98
    threshold_rule: Literal["quantile", "genpareto"] = "quantile"
    # "crossfit": those held-out normals, and every training normal scored against M_g with
    # the site's own items replaced by a memory built, as its upload is, without the image's
    # fold (`calibration_folds` folds), when M_g holds the site's last upload item for item
    # (else the held-out normals alone; method/client.py, FedDyMemClient.site_threshold);
    # "holdout": the held-out normals alone. None: each method's default as measured
    # (docs/detector.md, "Federated sites: the cross-fit"): FedDyMem's sites cross-fit,
    # fed-padim's hold out
    calibration: Literal["holdout", "crossfit"] | None = None
    calibration_folds: int = 3
    seed: int = 0
    # --- differential privacy of the upload (feddymem.privacy.dp, docs/privacy.md) ---
    dp_clip_norm: float | None = None  # C: clip every patch vector z_ij to L2 norm C; None: off
    dp_noise_multiplier: float = 0.0  # sigma: Gaussian noise std = sigma * sensitivity
    # --- heuristic upload defences (feddymem.privacy.defences; no formal guarantee) ---
    upload_noise: float = 0.0  # Gaussian noise on every patch vector before reduce, norm ~ this
    #                            times the spread of the site's vectors (0: off)
    upload_margin: float = 0.0  # drop released items nearer than this times that spread to any
    #                             single training patch vector (0: off)
    # --- the public vote (feddymem.privacy.public_vote; a Gaussian mechanism): upload only
    # public images' vectors, those of the codebook cells the site's images vote for. The
    # defaults with dynamic_memory = false are docs/privacy.md's setting: (0.199, 1e-5) ---
    public_vote: bool = False
    vote_cells: int = 2  # K: k-means cells of the public vectors
    vote_noise: float = 18.0  # sigma: noise std on each cell's vote (one image's vote: norm 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.gamma_d >= 1, "gamma_d must be >= 1")
        _check(self.gamma_c >= 1, "gamma_c must be >= 1")
        _check(self.client_memory_size >= 1, "client_memory_size must be >= 1")
        _check(
            self.global_memory_size is None or self.global_memory_size >= 1,
            "global_memory_size must be >= 1 or unset",
        )
        _check(self.loss_k >= 1 and self.loss_j >= 0, "loss_k must be >= 1 and loss_j >= 0")
        _check(self.nu > 0 and self.lr > 0, "nu and lr must be > 0")
        _check(self.local_epochs >= 0, "local_epochs must be >= 0")
        _check(self.score_k >= 1, "score_k must be >= 1")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(
            self.wire_dtype in ("float32", "float16", "pq", "sq8", "sq4"),
            "wire_dtype must be 'float32', 'float16', 'pq', 'sq8' or 'sq4', got "
            f"{self.wire_dtype!r}",
        )
        _check(
            1 <= self.wire_pq_subdim <= 64,
            f"wire_pq_subdim must be in [1, 64], got {self.wire_pq_subdim}",
        )
        _check(
            1 <= self.wire_pq_bits <= 8, f"wire_pq_bits must be in [1, 8], got {self.wire_pq_bits}"
        )
        _check(
            self.score_memory in ("global", "global+own"),
            f"score_memory must be 'global' or 'global+own', got {self.score_memory!r}",
        )
        _check(0.5 <= self.threshold_quantile <= 1.0, "threshold_quantile must be in [0.5, 1]")
        _check_rule(self.threshold_rule)
        _check(
            self.dp_clip_norm is None or self.dp_clip_norm > 0,
            f"dp_clip_norm must be > 0 or unset, got {self.dp_clip_norm}",
        )
        _check(
            self.dp_noise_multiplier >= 0,
            f"dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}",
        )
        _check(
            self.dp_noise_multiplier == 0 or self.dp_clip_norm is not None,
            "dp_noise_multiplier > 0 needs dp_clip_norm (noise is calibrated to the clip)",
        )
        _check(self.upload_noise >= 0, f"upload_noise must be >= 0, got {self.upload_noise}")
        check_calibration(self.calibration, self.calibration_folds, unset=True)
        _check(self.upload_margin >= 0, f"upload_margin must be >= 0, got {self.upload_margin}")
        _check(self.vote_cells >= 2, f"vote_cells must be >= 2, got {self.vote_cells}")
        _check(self.vote_noise >= 0, f"vote_noise must be >= 0, got {self.vote_noise}")
        if self.public_vote:
            _check(
                self.memory_reduce != "position_average",
                "public_vote uploads public vectors by cell; memory_reduce 'position_average' "
                "keeps no cells (use coreset, kmeans or none)",
            )
            _check(
                self.dp_clip_norm is None and self.upload_noise == 0 and self.upload_margin == 0,
                "public_vote uploads none of the site's vectors: dp_clip_norm, upload_noise and "
                "upload_margin have nothing to act on (unset them)",
            )
