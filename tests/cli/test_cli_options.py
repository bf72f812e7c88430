"""The detector commands' options: their defaults are DetectorConfig's."""

from __future__ import annotations

import dataclasses

from feddymem.cli import build_parser
from feddymem.cli.options import detector_config
from feddymem.config import DetectorConfig


def test_fit_without_options_builds_the_default_detector_config() -> None:
    args = build_parser().parse_args(["fit", "--data", "d", "--out", "m.pt"])
    built = detector_config(args)
    default = DetectorConfig()
    for field in ("calibration", "calibration_folds", "threshold_quantile", "threshold_rule"):
        assert getattr(built, field) == getattr(default, field), field
    assert dataclasses.asdict(built) == dataclasses.asdict(default)
