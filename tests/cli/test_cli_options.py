"""The detector commands' options: their defaults are DetectorConfig's."""

from __future__ import annotations

import dataclasses

from feddymem.cli import build_parser
from feddymem.cli.options import detector_config
from feddymem.config import DetectorConfig


def test_fit_without_options_builds_padim_cross_fitted_in_ten_folds() -> None:
    from feddymem.detect.gaussian import GaussianConfig

    built = detector_config(build_parser().parse_args(["fit", "--data", "d", "--out", "m.pt"]))
    assert isinstance(built, GaussianConfig)
    # the default by docs/detector.md's criterion: every training image in the Gaussians and
    # out of its fold once, at the same 2 % nominal false alarms as PatchCore's
    assert (built.calibration, built.calibration_folds, built.calibration_fraction) == (
        "crossfit",
        10,
        0.0,
    )
    assert built.threshold_quantile == DetectorConfig().threshold_quantile == 0.98
    assert (built.n_features, built.moment_noise) == (None, 0.0)
    held = ["fit", "--data", "d", "--out", "m.pt", "--calibration", "holdout"]
    assert detector_config(build_parser().parse_args(held)).calibration_fraction == 0.1


def test_fit_with_patchcore_builds_the_default_detector_config() -> None:
    argv = ["fit", "--data", "d", "--out", "m.pt", "--detector", "patchcore"]
    built = detector_config(build_parser().parse_args(argv))
    default = DetectorConfig()
    for field in ("calibration", "calibration_folds", "threshold_quantile", "threshold_rule"):
        assert getattr(built, field) == getattr(default, field), field
    assert dataclasses.asdict(built) == dataclasses.asdict(default)
