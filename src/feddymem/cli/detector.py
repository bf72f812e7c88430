"""`feddymem fit`, `evaluate` and `predict`: the detector on one site's images."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from feddymem.cli.errors import UsageError
from feddymem.cli.options import (
    add_detector_options,
    detector_config,
    progress_bar,
    with_option_names,
)


def cmd_fit(args: argparse.Namespace) -> int:
    from feddymem.config import ConfigError
    from feddymem.data import scan
    from feddymem.detect.detector import PatchCoreDetector
    from feddymem.detect.gaussian import GaussianConfig, GaussianDetector
    from feddymem.outputs import check_output_file

    cfg = detector_config(args)
    check_output_file(args.out)  # before the fit, not after it
    split = scan(args.data)
    t0 = time.perf_counter()
    det: Any
    with progress_bar(len(split.train), "features") as bar:
        try:
            if isinstance(cfg, GaussianConfig):
                det = GaussianDetector(cfg, weights=args.weights)
            else:
                det = PatchCoreDetector(cfg, weights=args.weights)
            det.fit(split.train, progress=bar.update)
        except ConfigError as err:  # a setting that only the data show to be out of range
            raise UsageError(with_option_names(str(err))) from None
    fit_s = time.perf_counter() - t0
    det.save(
        args.out,
        provenance={"source": "fit", "data": str(args.data), "written_at": time.time()},
    )
    summary: dict[str, Any] = {"model": str(args.out), "detector": args.detector}
    summary["train_images"] = len(split.train)
    if isinstance(det, GaussianDetector):
        assert det.precision_ is not None and det.mean_ is not None
        summary["gaussians"] = int(det.precision_.shape[0])  # one per grid position
        summary["model_mb"] = round((det.precision_.numel() + det.mean_.numel()) * 4 / 2**20, 3)
        summary["calibration_folds"] = det.calibration_folds_
    else:
        assert det.memory_ is not None
        summary["patches"] = det.n_patches_
        summary["memory_items"] = int(det.memory_.shape[0])
        summary["memory_mb"] = round(det.memory_.numel() * 4 / 2**20, 3)
    if det.tiling_ is not None:  # the --tile rule's choice, for the user to see
        plan = det.tiling_
        summary["tiling"] = {
            "tile": plan.tile,
            "overlap": plan.overlap,
            "pad": plan.pad,
            "tiles_per_image": plan.grid(det.extractor.stride).n_tiles,
            **({"gaussians": det.tile_gaussians_} if isinstance(det, GaussianDetector) else {}),
        }
    summary.update(
        image_hw=list(det.image_hw_ or ()), threshold=det.threshold_, fit_s=round(fit_s, 2)
    )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from feddymem.data import scan
    from feddymem.detect.registry import load_detector

    det = load_detector(args.model, weights=args.weights)
    split = scan(args.data)
    if not split.test:
        raise UsageError(f"{args.data} has no test images (expected test/<defect>/...)")
    labels = {s.label for s in split.test}
    if len(labels) < 2:
        kind = "normal (test/good)" if labels == {0} else "anomalous"
        raise UsageError(
            f"{args.data}: every test image is {kind}; evaluate needs both test/good and "
            "at least one test/<defect> folder"
        )
    t0 = time.perf_counter()
    with progress_bar(len(split.test), "scoring") as bar:
        metrics, scores = det.evaluate_with_scores(split.test, progress=bar.update)
    out: dict[str, Any] = {k: v for k, v in metrics.as_dict().items() if v is not None}
    # each test/<defect> folder against every good image: which kinds of defect it misses
    out["per_defect"] = scores.per_defect()
    # what the model's own threshold (set on normal images) flags: `predict`'s decisions, with
    # the best recall any threshold reaches at that false-alarm rate; and what thresholds set
    # the same way for fixed false-alarm rates (1%, 2%, 5%) flag
    points = det.operating_points(scores)
    if points["at_threshold"] is not None:
        out["at_threshold"] = points["at_threshold"]
    if points["at_far"]:
        out["at_far"] = points["at_far"]
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, value in out.items():
        if key == "per_defect":
            for defect, row in value.items():
                name = f"{defect} ({row['n']})"
                print(f"{name:>14}: image_auroc {row['image_auroc']:.4f}")
        elif key == "at_threshold":
            print(
                f"{'at threshold':>14}: {value['threshold']:.4f} flags {value['flagged']} "
                f"image(s): recall {value['recall']:.4f}, false-alarm rate "
                f"{value['false_alarm_rate']:.4f} of {value['normals']} normals (95% interval "
                f"{value['false_alarm_rate_ci95'][0]:.4f}-{value['false_alarm_rate_ci95'][1]:.4f}), "
                f"precision {value['precision']:.4f} "
                f"(best recall at this false-alarm rate {value['oracle_recall']:.4f})"
            )
        elif key == "at_far":
            for rate, row in value.items():
                print(
                    f"{'at FAR ' + format(float(rate), '.0%'):>14}: {row['threshold']:.4f} "
                    f"flags {row['flagged']} image(s): recall {row['recall']:.4f}, false-alarm "
                    f"rate {row['false_alarm_rate']:.4f}, precision {row['precision']:.4f}"
                )
        else:
            print(f"{key:>14}: {value:.4f}" if isinstance(value, float) else f"{key:>14}: {value}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from feddymem.detect.predict import image_files, overlay_names, predict_files
    from feddymem.detect.registry import load_detector
    from feddymem.outputs import check_output_dir

    check_output_dir(args.out)
    files = image_files([Path(p) for p in args.images])
    if not files:
        raise UsageError(f"no image files in {' '.join(args.images)}")
    overlay_names(files)  # two inputs sharing an overlay: refused before any work
    det = load_detector(args.model, weights=args.weights)
    with progress_bar(len(files), "predicting") as bar:
        summary = predict_files(det, files, args.out, progress=bar.update)
    print(
        f"{summary.scored} scored, {summary.flagged} flagged anomalous, "
        f"{len(summary.skipped)} skipped -> {summary.csv_path}"
    )
    if summary.scored == 0:
        raise UsageError(
            f"none of the {len(files)} input(s) could be scored (reasons in {summary.csv_path})"
        )
    return 0


def register(sub: Any) -> None:
    """Add fit, evaluate and predict to the `feddymem` subcommands."""
    p = sub.add_parser(
        "fit",
        help="fit a detector (PatchCore-style memory, or PaDiM) on normal images",
        description="Fit a detector on <data>/train/good and save it as one file.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="MVTec-layout root (train/good, test/..., ground_truth/...)",
    )
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    add_detector_options(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "evaluate",
        help="image / pixel metrics of a model on a test set",
        description="Score <data>/test and report image AUROC, F1-max, and pixel AUROC / AUPRO where masks exist.",
    )
    p.add_argument("--model", type=Path, required=True, help="model file from `fit` or `federate`")
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout root with a test/ folder")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="local backbone weights file, if the model's backbone needs one",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="score images: heat-map overlays and a CSV of decisions",
        description="Score images with a fitted model; write <out>/<input path>/<stem>_overlay.png "
        "(heat map, colour bar, score against threshold, decision) and <out>/scores.csv.",
    )
    p.add_argument("--model", type=Path, required=True, help="model file from `fit` or `federate`")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--weights", type=Path, default=None, help="local backbone weights file, if needed"
    )
    p.set_defaults(func=cmd_predict)
