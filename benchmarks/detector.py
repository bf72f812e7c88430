"""Benchmark of the centralised detector: accuracy on real data, throughput, fit cost.

    .venv/bin/python benchmarks/detector.py --out runs/bench_detector [--only elpv,surface,synth,speed,coreset,select,tilespeed] [--tile off|auto|on]

Prints one JSON row per (data set) with the fixed schema of the project's benchmarks and writes
them to <out>/detector.jsonl, plus the speed and fit figures to <out>/speed.json, the coreset
timings to <out>/coreset.json and the settings compared on synthetic validation sets to
<out>/select.jsonl, and the threshold rules compared at a nominal 2% false-alarm rate to
<out>/rules.jsonl (`--only rules`).
Data: ELPV (exported by `feddymem data elpv`), the real pixel-labelled sets in ../shared/data
(FEDDYMEM_SHARED_DATA), ELPV good cells with `data synth` anomalies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import torch
from torch.utils.flop_counter import FlopCounterMode

from feddymem.allocator import keep_freed_memory, keeping_freed_memory
from feddymem.config import DetectorConfig
from feddymem.data import Sample, export_elpv, iter_batches, scan
from feddymem.detect.base import Detector
from feddymem.detect.detector import PatchCoreDetector, patch_scores
from feddymem.detect.features import PatchFeatureExtractor
from feddymem.detect.gaussian import GaussianConfig, GaussianDetector, central_config
from feddymem.detect.knn import NearestNeighbors
from feddymem.detect.sampling import greedy_coreset
from feddymem.detect.threshold import (
    oracle_recall,
    quantile_threshold,
    rule_threshold,
    split_calibration,
    synthetic_threshold,
)

REPO = Path(__file__).resolve().parents[1]
# (k-means cells, cells probed per query) of the approximate searches `--only speed` times
IVF_SETTINGS = ((32, 1), (32, 4))
SHARED = Path(os.environ.get("FEDDYMEM_SHARED_DATA", REPO.parent / "shared" / "data"))
# feature dimensions of the shortened products timed next to the full one (knn_bf16_product_d*)
PRODUCT_DIMS = (32, 64)
# the settings `--only select` compares, by the name its rows carry: DetectorConfig changes
SELECT_SETTINGS: dict[str, dict[str, object]] = {
    "default": {},
    "tap_balance": {"tap_balance": True},
    "topk_fraction=0.05": {"topk_fraction": 0.05},
    "coreset_ratio=0.02": {"coreset_ratio": 0.02},
}
# the fits `--only rules` compares (DetectorConfig changes from the release's settings); each
# fit's normal calibration scores are then turned into thresholds by every rule
RULE_FITS: dict[str, dict[str, object]] = {
    "holdout": {"calibration": "holdout"},
    "crossfit": {"calibration": "crossfit"},
    # three folds: each fold's bank is built from two thirds of the normals, so the fit costs
    # about 3 x (2/3)^2 + 1 coresets against 5 x (4/5)^2 + 1 with five
    "crossfit3": {"calibration": "crossfit", "calibration_folds": 3},
    # the same, each image's score carried to the whole bank's size (one more bank per fold,
    # of a third of the normals: 3 x (1/3)^2 more coresets)
    "crossfit3_size": {
        "calibration": "crossfit",
        "calibration_folds": 3,
        "crossfit_correction": "size",
    },
    "tap_balance_refit": {
        "calibration": "holdout",
        "tap_balance": True,
        "refit_with_calibration": True,
    },
}


# the fits `--only rules --detector padim` compares (GaussianConfig changes): the held-out
# tenth, and the exact cross-fit (pooled moments minus the fold's) beside it
GAUSSIAN_RULE_FITS: dict[str, dict[str, object]] = {
    # (each fit names its held-out share: the base, `central_config`, holds none out)
    "padim_holdout": {"calibration": "holdout", "calibration_fraction": 0.1},
    "padim_crossfit3": {
        "calibration": "crossfit",
        "calibration_folds": 3,
        "calibration_fraction": 0.1,
    },
    # every training image in the Gaussians and out of fold once, no tenth held out (as
    # PatchCore's cross-fit): a fold's Gaussians are the sums minus the fold's, exact and
    # without a refit, so folds cost only a precision each; 10, the usual cross-validation
    # count, leaves each fold's model 90 % of the normals (3: two thirds)
    "padim_crossfit3_all": {
        "calibration": "crossfit",
        "calibration_folds": 3,
        "calibration_fraction": 0.0,
    },
    "padim_crossfit10_all": {
        "calibration": "crossfit",
        "calibration_folds": 10,
        "calibration_fraction": 0.0,
    },
}


def make_detector(cfg: DetectorConfig | GaussianConfig) -> Detector:
    """The detector a config describes: PaDiM's Gaussians or PatchCore's memory."""
    if isinstance(cfg, GaussianConfig):
        return GaussianDetector(cfg)
    return PatchCoreDetector(cfg)


def gaussian_like(cfg: DetectorConfig) -> GaussianConfig:
    """PaDiM on `cfg`'s features, seed, nominal false-alarm rate and calibration, as `feddymem
    fit --detector padim` builds it (`gaussian.central_config`)."""
    return central_config(
        cfg, calibration=cfg.calibration, threshold_quantile=cfg.threshold_quantile
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(name: str, root: Path, cfg: DetectorConfig | GaussianConfig) -> dict[str, object]:
    split = scan(root)
    t0 = time.perf_counter()
    det: Any = make_detector(cfg).fit(split.train)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics, scores = det.evaluate_with_scores(split.test)
    eval_s = time.perf_counter() - t1
    memory = det.memory_ if isinstance(det, PatchCoreDetector) else det.precision_
    assert memory is not None
    row: dict[str, object] = {
        "method": "padim" if isinstance(det, GaussianDetector) else "patchcore",
        "dataset": name,
        "clients": 1,
        "seed": cfg.seed,
        **{k: v for k, v in metrics.as_dict().items()},
        # each test/<defect> folder against every good image
        "per_defect": scores.per_defect(),
        # what the fitted threshold (the config's rule on the calibration normals) flags on the
        # test set, with the oracle's recall at the same false-alarm rate (`oracle_recall`),
        # and what thresholds set the same way for 1%, 2%, 5% false alarms flag
        **_rounded(det.operating_points(scores)),
        "bytes_up": 0,
        "bytes_down": 0,
        "rounds": 0,
        "wall_s": round(fit_s + time.perf_counter() - t1, 2),
        "fit_s": round(fit_s, 2),
        "train_images": len(split.train),
        "image_hw": list(det.image_hw_ or ()),
        # PatchCore: the memory's items; PaDiM: its grid positions (one Gaussian each)
        "memory_items": int(memory.shape[0]),
        "memory_mb": round(memory.numel() * 4 / 2**20, 3),
        # --tap-balance: each tap's fitted factor (1 / sqrt(mean channel variance))
        "tap_scale": None
        if getattr(det, "feature_scale_", None) is None
        else [
            round(float(part[0]), 4)
            for part in det.feature_scale_.split(list(det.extractor.tap_channels))
        ],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # tiled scoring (--tile): the working image size, tile and overlap; None: resized
        "tiling": None
        if det.tiling_ is None
        else {
            "image_hw": list(det.tiling_.image_hw),
            "tile": det.tiling_.tile,
            "overlap": det.tiling_.overlap,
            "pad": det.tiling_.pad,
            "image_border": det.image_border_,
            "tiles_per_image": det.tiling_.grid(det.extractor.stride).n_tiles,
            # PaDiM: Gaussians per position of the native image or of a tile
            "gaussians": getattr(det, "tile_gaussians_", None),
        },
        # the test set scored end to end (decode included), images per second
        "images_per_s": round(len(split.test) / eval_s, 2),
    }
    print(json.dumps(row), flush=True)
    at = row["at_threshold"]
    if isinstance(at, dict):
        print(
            f"{name}: at the site's threshold false alarms {at['false_alarm_rate']:.3f} "
            f"(nominal {1 - cfg.threshold_quantile:.2f}), recall {at['recall']:.3f}; best "
            f"recall at that false-alarm rate {at['oracle_recall']:.3f}",
            flush=True,
        )
    return row


def _rounded(value: object) -> object:
    """Floats in a nested dict rounded to 4 places (rows stay readable)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def rules(
    name: str,
    root: Path,
    cfg: DetectorConfig | GaussianConfig,
    *,
    work: Path,
    rate: float = 0.02,
    fits: Sequence[str] = tuple(RULE_FITS),
) -> list[dict[str, object]]:
    """Threshold rules from normal images only, each at a nominal false-alarm rate `rate`: for
    each fit of RULE_FITS, the image scores of the normals that set its threshold (the held-out
    tenth, or every training image out of its fold) become a threshold by their empirical
    quantile and by a generalised Pareto fit to their upper tail; for the held-out fit also by
    synthetic anomalies (`data synth`) made from the held-out normals (the threshold that best
    separates them from those normals). A row per (fit, rule): false-alarm rate and recall on the
    test set at that threshold, and the best recall any threshold reaches at the same
    false-alarm rate (`oracle_recall`). Nothing here looks at test defects to set anything."""
    from feddymem.data.generated.synth.dataset import synthesize_dataset

    split = scan(root)
    rows: list[dict[str, object]] = []
    for fit_name in fits:
        table = GAUSSIAN_RULE_FITS if isinstance(cfg, GaussianConfig) else RULE_FITS
        fit_cfg: Any = dataclasses.replace(cfg, **table[fit_name])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        det: Any = make_detector(fit_cfg).fit(split.train)
        fit_s = time.perf_counter() - t0
        metrics, scores = det.evaluate_with_scores(split.test)
        calib = det.calibration_scores_
        assert calib is not None
        thresholds = {
            "quantile": rule_threshold(calib, rule="quantile", false_alarm_rate=rate),
            "genpareto": rule_threshold(calib, rule="genpareto", false_alarm_rate=rate),
            "quantile_0.99": quantile_threshold(calib, quantile=0.99),  # the 1% rule before
        }
        if fit_cfg.calibration == "holdout" and not getattr(
            fit_cfg, "refit_with_calibration", False
        ):
            fit, held = split_calibration(
                list(split.train), fraction=fit_cfg.calibration_fraction, seed=fit_cfg.seed
            )
            target = work / f"{name}-{fit_cfg.seed}"
            synthesize_dataset(
                [s.path for s in held],
                target,
                seed=fit_cfg.seed,
                n_anomalous=len(held),
                n_good=0,
                train=[fit[0].path],
            )
            synthetic = [
                Sample(path=p, label=1, defect="synthetic")
                for p in sorted((target / "test").rglob("*.png"))
            ]
            thresholds["synthetic"] = synthetic_threshold(
                calib, det.score_samples(synthetic).image_scores
            )
        nominal = quantile_threshold(scores.image_scores[scores.labels == 0], quantile=1 - rate)
        for rule, threshold in thresholds.items():
            point = scores.operating_point(threshold)
            oracle = oracle_recall(scores.labels, scores.image_scores, threshold=threshold)
            row: dict[str, object] = {
                "dataset": name,
                "fit": fit_name,
                "rule": rule,
                "seed": fit_cfg.seed,
                "nominal_far": rate,
                "calibration_normals": int(calib.size),
                "threshold": round(threshold, 4),
                "far": round(point["false_alarm_rate"], 4),
                "recall": round(point["recall"], 4),
                "precision": round(point["precision"], 4),
                "oracle_recall": round(oracle, 4),
                # the oracle at the nominal rate itself (the test normals' own quantile)
                "oracle_recall_at_nominal": round(
                    oracle_recall(scores.labels, scores.image_scores, threshold=nominal), 4
                ),
                "far_ok": abs(point["false_alarm_rate"] - rate) <= 0.01 + 1e-9,
                "recall_ok": point["recall"] >= oracle - 0.05 - 1e-9,
                "image_auroc": round(metrics.image_auroc, 4),
                "fit_s": round(fit_s, 2),
            }
            print(
                f"{name:>14} {fit_name:>17} {rule:>13}: false alarms {row['far']:.3f} "
                f"(nominal {rate:.2f}), recall {row['recall']:.3f}, oracle at that rate "
                f"{row['oracle_recall']:.3f}",
                flush=True,
            )
            rows.append(row)
    return rows


def fit_times(
    root: Path,
    cfg: DetectorConfig,
    *,
    n_fit: int = 400,
    fits: Sequence[str] = tuple(RULE_FITS),
) -> dict[str, object]:
    """Fit time of each RULE_FITS or GAUSSIAN_RULE_FITS setting on `n_fit` ELPV
    mono cells at 224 px, back to back in one run, and its ratio to PatchCore's held-out fit
    (the release's); the load is in `load`."""
    train = list(scan(root).train)[:n_fit]
    times: dict[str, float] = {}
    for fit_name in ("holdout", *(f for f in fits if f != "holdout")):
        if fit_name in RULE_FITS:
            fit_cfg: Any = dataclasses.replace(cfg, **RULE_FITS[fit_name])  # type: ignore[arg-type]
        else:
            fit_cfg = dataclasses.replace(gaussian_like(cfg), **GAUSSIAN_RULE_FITS[fit_name])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        make_detector(fit_cfg).fit(train)
        times[fit_name] = time.perf_counter() - t0
    out: dict[str, object] = {
        "fit_images": len(train),
        "fit_s": {k: round(v, 2) for k, v in times.items()},
        "ratio_to_holdout": {k: round(v / times["holdout"], 2) for k, v in times.items()},
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out), flush=True)
    return out


def speed(
    root: Path, cfg: DetectorConfig, *, n_fit: int = 400, n_score: int = 256, repeats: int = 5
) -> dict[str, object]:
    """Fit time for n_fit images and scoring throughput at 224 px vs the backbone alone.

    The network's forward pass and the detector on the same pre-decoded batch run back to back,
    batch by batch, so both see the same spell of the machine; each repeat gives one ratio of
    the two and the run reports their median. The end-to-end pass (decoding included) runs
    once a repeat, between them, and is compared with that repeat's forward-only time.
    """
    split = scan(root)
    train = list(split.train)[:n_fit]
    t0 = time.perf_counter()
    det = PatchCoreDetector(cfg).fit(train)
    fit_s = time.perf_counter() - t0
    pool: list[Sample] = (list(split.test) + list(split.train)) * 4
    samples = pool[:n_score]
    assert det.image_hw_ is not None and det.memory_ is not None
    # Backbone alone: forward passes over pre-decoded tensors, same batch size.
    batches = [
        b.images
        for b in iter_batches(
            samples, size=det.image_hw_, batch_size=cfg.batch_size, with_masks=False
        )
    ]
    extractor = det.extractor
    # forward-only: what the detector's feature pass runs before aggregating (normalisation
    # and the optimised network, in inference mode)
    forward_only = extractor.taps
    # warm-up, the first call tracing the optimised graph
    for images in batches[:3]:
        forward_only(images)
        det.score(images)
    forward_runs, e2e_runs, decoded_runs = [], [], []
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        forward_s = decoded_s = 0.0
        for images in batches:
            t1 = time.perf_counter()
            forward_only(images)
            t2 = time.perf_counter()
            det.score(images)  # the detector on the same tensors: features + k-NN + maps
            forward_s += t2 - t1
            decoded_s += time.perf_counter() - t2
        forward_runs.append(forward_s)
        decoded_runs.append(decoded_s)
        # End to end: decode + features + k-NN + anomaly maps.
        t3 = time.perf_counter()
        scores = det.score_samples(samples)
        e2e_runs.append(time.perf_counter() - t3)
    # what the kernel did for the process over the timed repeats above (forward-only, pre-decoded
    # and end-to-end passes): page faults (fresh pages for memory the allocator had given back)
    # and the time spent in the kernel (feddymem.allocator)
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    forward_s, e2e_s = statistics.median(forward_runs), statistics.median(e2e_runs)
    predecoded_s = statistics.median(decoded_runs)
    # per repeat: the detector's time over the forward-only time of the same repeat
    paired = [d / f - 1.0 for d, f in zip(decoded_runs, forward_runs, strict=True)]
    paired_e2e = [e / f - 1.0 for e, f in zip(e2e_runs, forward_runs, strict=True)]
    with torch.inference_mode():  # the same network in eager PyTorch, for reference
        extractor.net(batches[0])
        t3 = time.perf_counter()
        for images in batches:
            extractor.net((images - extractor.mean) / extractor.std)
        eager_s = time.perf_counter() - t3
    # Where the end-to-end time goes, stage by stage over the same images (seconds in all),
    # with the float32 search (no bfloat16 screen) and faiss's flat index timed on the same
    # queries next to the detector's own k-NN (each right after a network pass, as the
    # detector's own search runs), and where their neighbours differ from its.
    faiss_index = NearestNeighbors(det.memory_, backend="faiss")
    float32_index = NearestNeighbors(det.memory_, backend="torch", screen=False)
    # An approximate search for comparison: faiss's inverted-file index (k-means cells, exact
    # distances inside the cells probed), at the probes that keep most neighbours exact.
    faiss.omp_set_num_threads(torch.get_num_threads())
    bank_np = det.memory_.numpy()
    ivf_indexes = {}
    for cells, probes in IVF_SETTINGS:
        if cells > bank_np.shape[0]:  # k-means needs at least one item a cell
            continue
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(bank_np.shape[1]), bank_np.shape[1], cells)
        ivf.cp.seed = cfg.seed
        ivf.train(bank_np)
        ivf.add(bank_np)
        ivf.nprobe = probes
        ivf_indexes[f"knn_faiss_ivf{cells}_probe{probes}"] = ivf
    ivf_stats = {
        name: {"s": 0.0, "differ": 0, "excess": 0.0, "exact_sum": 0.0} for name in ivf_indexes
    }
    stages = {
        "decode": 0.0,
        "features": 0.0,
        "knn": 0.0,
        "maps": 0.0,
        "knn_float32": 0.0,
        "knn_faiss": 0.0,
        "knn_bf16_product": 0.0,
        # the same product over the first d feature dimensions only: how much of its cost is
        # the arithmetic (which scales with d) and how much writing the (queries, items) scores
        **{f"knn_bf16_product_d{d}": 0.0 for d in PRODUCT_DIMS},
    }
    differ = {"knn_float32": 0, "knn_faiss": 0}
    # and, on the first 4,096 queries, where each differs from a float64 brute force
    differ_f64: dict[str, int] = {}
    max_gap = {"knn_float32": 0.0, "knn_faiss": 0.0}
    t4 = time.perf_counter()
    decoded = list(
        iter_batches(samples, size=det.image_hw_, batch_size=cfg.batch_size, with_masks=False)
    )
    stages["decode"] = time.perf_counter() - t4
    # The floor of the screen's approach: its bfloat16 matrix product alone ((queries, D + 4)
    # by (D + 4, items) in chunks of 1,024 queries), with none of the passes over the scores.
    product_bank = torch.ones((det.memory_.shape[1] + 4, det.memory_.shape[0]))
    product_bank[:-4] = det.memory_.t()
    product_bank = product_bank.bfloat16()
    for batch in decoded:
        t5 = time.perf_counter()
        z = det.embed(batch.images)
        t6 = time.perf_counter()
        # what nearest_patch_scores does for PatchCore ('nearest' scoring), keeping the indices
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        own_d, own_i = det.index.search(flat, cfg.num_neighbors)
        patch = patch_scores(own_d).view(z.shape[0], z.shape[2], z.shape[3])
        t7 = time.perf_counter()
        det.result_from_patch_scores(patch)
        stages["maps"] += time.perf_counter() - t7
        if not differ_f64:
            sub = flat[:4096]
            exact = torch.cdist(sub.double(), det.memory_.double())
            truth = exact.topk(cfg.num_neighbors, dim=1, largest=False).indices
            for name, index in (
                ("knn", det.index),
                ("knn_float32", float32_index),
                ("knn_faiss", faiss_index),
            ):
                found = index.search(sub, cfg.num_neighbors)[1]
                differ_f64[name] = int((found != truth).any(dim=1).sum())
        for name, index in (("knn_float32", float32_index), ("knn_faiss", faiss_index)):
            # each right after a network pass, as the detector's own search runs
            z_again = det.embed(batch.images)
            t8 = time.perf_counter()
            dist, idx = index.search(
                z_again.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), cfg.num_neighbors
            )
            stages[name] += time.perf_counter() - t8
            differ[name] += int((idx != own_i).any(dim=1).sum())
            max_gap[name] = max(max_gap[name], float((dist - own_d).abs().max()))
        for name, ivf in ivf_indexes.items():
            z_again = det.embed(batch.images)  # right after a network pass, as the others
            queries_np = z_again.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).numpy()
            t11 = time.perf_counter()
            d2_ivf, idx_ivf = ivf.search(queries_np, cfg.num_neighbors)
            ivf_stats[name]["s"] += time.perf_counter() - t11
            found = torch.from_numpy(idx_ivf)
            ivf_stats[name]["differ"] += int((found != own_i).any(dim=1).sum())
            # how much farther the approximate nearest is, relative to the exact one, in all
            nearest = torch.from_numpy(d2_ivf[:, 0]).clamp_min(0).sqrt()
            ivf_stats[name]["excess"] += float((nearest - own_d[:, 0]).clamp_min(0).sum())
            ivf_stats[name]["exact_sum"] += float(own_d[:, 0].sum())
        z_again = det.embed(batch.images)  # right after a network pass, as the others
        lhs = torch.ones((flat.shape[0], product_bank.shape[0]), dtype=torch.bfloat16)
        lhs[:, :-4] = z_again.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        factors = {"knn_bf16_product": (lhs, product_bank)}
        for d in PRODUCT_DIMS:
            keep = [*range(d), *range(product_bank.shape[0] - 4, product_bank.shape[0])]
            factors[f"knn_bf16_product_d{d}"] = (
                lhs[:, keep].contiguous(),
                product_bank[keep].contiguous(),
            )
        for name, (left, right) in factors.items():
            t10 = time.perf_counter()
            for lo in range(0, left.shape[0], 1024):
                left[lo : lo + 1024] @ right
            stages[name] += time.perf_counter() - t10
        stages["features"] += t6 - t5
        stages["knn"] += t7 - t6
    # The k-NN's arithmetic rate: 2 * queries * memory items * dimensions flops.
    queries = len(samples) * patch.shape[1] * patch.shape[2]
    knn_gflops = 2.0 * queries * det.memory_.shape[0] * det.memory_.shape[1] / 1e9
    # The network's own arithmetic (PyTorch's flop counter on the eager network, one image),
    # and this machine's dense float32 matrix-product rate, for the k-NN's floor.
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        extractor.net(batches[0][:1])
    network_gflop = counter.get_total_flops() / 1e9
    square = torch.randn(2048, 2048)
    square @ square
    t9 = time.perf_counter()
    for _ in range(5):
        square @ square
    peak_gflop_s = 5 * 2 * 2048**3 / 1e9 / (time.perf_counter() - t9)
    out = {
        "backbone": cfg.backbone,
        "torch_threads": torch.get_num_threads(),
        "image_hw": list(det.image_hw_),
        "fit_images": len(train),
        "fit_s": round(fit_s, 2),
        "memory_items": int(det.memory_.shape[0]),
        "memory_mb": round(det.memory_.numel() * 4 / 2**20, 3),
        "scored_images": len(scores.samples),
        "knn_backend": cfg.knn_backend,
        "knn_bfloat16_screen": det.index.screen,
        "knn_screen_fallback_chunks": det.index.screen_fallbacks,
        "knn_screen_candidates_per_query": round(
            det.index.screen_candidates / max(det.index.screened_queries, 1), 2
        ),
        "repeats": repeats,
        "allocator_keeps_freed_memory": keeping_freed_memory(),
        "scoring_minor_page_faults": usage_after.ru_minflt - usage_before.ru_minflt,
        "scoring_system_s": round(usage_after.ru_stime - usage_before.ru_stime, 2),
        "scoring_user_s": round(usage_after.ru_utime - usage_before.ru_utime, 2),
        "forward_only_img_s": round(len(samples) / forward_s, 1),
        "forward_only_img_s_runs": [round(len(samples) / t, 1) for t in forward_runs],
        "forward_only_eager_img_s": round(len(samples) / eager_s, 1),
        "end_to_end_img_s": round(len(samples) / e2e_s, 1),
        "end_to_end_img_s_runs": [round(len(samples) / t, 1) for t in e2e_runs],
        # end-to-end time over forward-only time, each repeat's own pair; the median and all
        "detector_overhead": round(statistics.median(paired_e2e), 3),
        "detector_overhead_runs": [round(v, 3) for v in paired_e2e],
        # scoring pre-decoded tensors: what the detector adds to the network, decoding aside
        "predecoded_img_s": round(len(samples) / predecoded_s, 1),
        "predecoded_img_s_runs": [round(len(samples) / t, 1) for t in decoded_runs],
        "detector_overhead_without_decode": round(statistics.median(paired), 3),
        "detector_overhead_without_decode_runs": [round(v, 3) for v in paired],
        # stage times as shares of the backbone's forward-only time, measured in this run
        "stage_s": {k: round(v, 2) for k, v in stages.items()},
        "stage_share_of_forward": {k: round(v / forward_s, 3) for k, v in stages.items()},
        # k-NN rates in float32-equivalent arithmetic (2 * queries * items * dims flops)
        "knn_gflop_s": round(knn_gflops / stages["knn"], 1),
        "knn_float32_gflop_s": round(knn_gflops / stages["knn_float32"], 1),
        "knn_faiss_gflop_s": round(knn_gflops / stages["knn_faiss"], 1),
        # the approximate inverted-file searches: time as a share of the forward-only time,
        # queries whose nearest item differs from the exact search's, and the summed excess
        # distance over the summed exact distance (how much the patch scores rise)
        "knn_approximate": {
            name: {
                "share_of_forward": round(st["s"] / forward_s, 3),
                "queries_differing": st["differ"],
                "distance_excess": float(f"{st['excess'] / max(st['exact_sum'], 1e-12):.3g}"),
            }
            for name, st in ivf_stats.items()
        },
        "knn_speedup_over_float32": round(stages["knn_float32"] / stages["knn"], 2),
        # queries whose neighbours differ from the detector's k-NN, and the largest distance gap
        "knn_queries": queries,
        "knn_queries_differing": differ,
        "knn_float64_checked_queries": 4096,
        "knn_queries_differing_from_float64": differ_f64,
        "knn_max_distance_gap": {k: float(f"{v:.3g}") for k, v in max_gap.items()},
        "network_gflop_per_image": round(network_gflop, 3),
        "knn_gflop_per_image": round(knn_gflops / len(samples), 3),
        "matmul_peak_gflop_s": round(peak_gflop_s, 1),
        # the exact k-NN's time at that peak rate, as a share of the forward-only time
        "knn_share_at_peak": round(knn_gflops / peak_gflop_s / forward_s, 3),
    }
    print(json.dumps(out), flush=True)
    return out


def select(
    name: str,
    root: Path,
    cfg: DetectorConfig,
    *,
    work: Path,
    settings: dict[str, dict[str, object]] = SELECT_SETTINGS,
    fraction: float = 0.2,
) -> list[dict[str, object]]:
    """Could a site choose its settings without real defects? Each setting is scored two ways.

    Validation, from normal training images only: a seeded `fraction` of train/good is held
    out, half of it receives `data synth` anomalies, and the detector fitted on the rest of
    train/good scores them (`val_*`). Test: the same setting fitted on all of train/good and
    scored on the real test set, as `run_one` does. A row per setting; the setting with the best
    validation image AUROC is the one a site would pick (`picked`).
    """
    from feddymem.data.generated.synth.dataset import synthesize_dataset

    fit, held_out = split_calibration(list(scan(root).train), fraction=fraction, seed=cfg.seed)
    if not held_out:
        raise ValueError(f"{root}: too few training images to hold some out for validation")
    # scan() reads the MVTec layout, which needs a train/good folder: one fitting image makes
    # it (it is not used; the detectors below are fitted on `fit`)
    synthesize_dataset([s.path for s in held_out], work / name, seed=cfg.seed, train=[fit[0].path])
    validation = scan(work / name).test
    rows: list[dict[str, object]] = []
    for setting, changes in settings.items():
        setting_cfg = dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
        val = PatchCoreDetector(setting_cfg).fit(fit).evaluate(validation)
        test = run_one(name, root, setting_cfg)
        rows.append(
            {
                "dataset": name,
                "setting": setting,
                "seed": cfg.seed,
                "fit_images": len(fit),
                "validation_good": sum(1 for s in validation if s.label == 0),
                "validation_synthetic": sum(1 for s in validation if s.label == 1),
                "val_image_auroc": val.image_auroc,
                "val_pixel_auroc": val.pixel_auroc,
                "val_aupro": val.aupro,
                **{k: test[k] for k in ("image_auroc", "pixel_auroc", "aupro", "train_images")},
            }
        )
    best = max(rows, key=lambda r: float(r["val_image_auroc"]))  # type: ignore[arg-type]
    for row in rows:
        row["picked"] = row is best
        print(json.dumps(row), flush=True)
    return rows


def coreset(root: Path, cfg: DetectorConfig, *, n_images: int = 400) -> list[dict[str, object]]:
    """The greedy coreset's lazy update against updating every row at every step (the plain
    algorithm), on the patch features of `n_images` ELPV training cells at 224 px: time, and
    whether both choose the same rows."""
    split = scan(root)
    extractor = PatchFeatureExtractor(backbone=cfg.backbone)
    feats = [
        extractor(batch.images)
        for batch in iter_batches(
            list(split.train)[:n_images], size=(224, 224), batch_size=16, with_masks=False
        )
    ]
    bank = torch.cat(feats).permute(0, 2, 3, 1).reshape(-1, extractor.out_channels).contiguous()
    rows: list[dict[str, object]] = []
    for size in (round(0.01 * bank.shape[0]), 8192):
        times, chosen = {}, {}
        # Each at its own best chunk size: 1,024 rows (the default) for the lazy update, 16,384
        # for the plain one (its matrix-vector passes want long chunks).
        for name, lazy, chunk in (("lazy", True, 1024), ("every_step", False, 16384)):
            t0 = time.perf_counter()
            chosen[name] = greedy_coreset(
                bank, size=size, seed=cfg.seed, lazy=lazy, chunk_size=chunk
            )
            times[name] = time.perf_counter() - t0
        differ = (chosen["lazy"] != chosen["every_step"]).nonzero()
        row: dict[str, object] = {
            "bank_rows": int(bank.shape[0]),
            "dims": int(bank.shape[1]),
            "coreset_size": size,
            "lazy_s": round(times["lazy"], 2),
            "every_step_s": round(times["every_step"], 2),
            "speedup": round(times["every_step"] / times["lazy"], 1),
            "same_rows": set(chosen["lazy"].tolist()) == set(chosen["every_step"].tolist()),
            "same_order_up_to": int(differ[0]) if len(differ) else size,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_detector")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument(
        "--only",
        default="elpv,surface,synth,speed",
        help="comma-separated parts: elpv, surface, synth, speed, coreset, select (settings "
        "compared on synthetic validation sets and on the real test sets), rules (threshold "
        "rules at a nominal 2%% false-alarm rate on every real set, and their fit times)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the detector's seed")
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the ELPV export's train / test split and of the synthetic anomalies "
        "(default: --seed); fix it to see what the detector's seed alone moves",
    )
    parser.add_argument("--surface-sets", default="magnetic_tile,kolektorsdd")
    parser.add_argument(
        "--rule-fits",
        default=",".join(RULE_FITS),
        help="fits --only rules compares, comma-separated (default: all of them)",
    )
    parser.add_argument(
        "--detector",
        choices=["patchcore", "padim"],
        default="patchcore",
        help="the detector of the elpv, surface and rules parts: PatchCore's memory, or PaDiM's "
        "Gaussian per grid position on the same features (GaussianConfig's defaults, with "
        "this run's seed, 2%% nominal false alarms and --calibration); the rules part then "
        "compares GAUSSIAN_RULE_FITS",
    )
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--image-size", type=int, default=256, help="short side in pixels")
    parser.add_argument(
        "--backbone", default=None, help="backbone name (default: the detector's default)"
    )
    parser.add_argument(
        "--layers", default=None, help="comma-separated taps (default: the backbone's default)"
    )
    parser.add_argument(
        "--topk-fraction",
        type=float,
        default=None,
        help="image score: mean of this fraction of the highest patch scores (default 0.02)",
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        help="rebuild each memory bank with the threshold's held-out normals in it",
    )
    parser.add_argument(
        "--calibration",
        choices=["holdout", "crossfit"],
        default=DetectorConfig.calibration,
        help="how the threshold is set (DetectorConfig.calibration; default: %(default)s; "
        "--refit needs holdout)",
    )
    parser.add_argument(
        "--tap-balance",
        action="store_true",
        help="scale each tap so its channels have the same mean variance over the training patches",
    )
    parser.add_argument(
        "--tile",
        choices=["off", "auto", "on"],
        default="off",
        help="tiled scoring (DetectorConfig.tile); --only tilespeed compares both itself",
    )
    parser.add_argument("--tile-scale", type=float, default=1.0, help="DetectorConfig.tile_scale")
    parser.add_argument(
        "--tile-pad", type=int, default=None, help="DetectorConfig.tile_pad (None: the rule)"
    )
    parser.add_argument(
        "--tile-gaussians",
        default="auto",
        choices=["auto", "image", "tile"],
        help="--detector padim, tiled: GaussianConfig.tile_gaussians",
    )
    parser.add_argument(
        "--tile-border",
        choices=["auto", "on", "off"],
        default=DetectorConfig.tile_border,
        help="DetectorConfig.tile_border",
    )
    parser.add_argument(
        "--tile-bank-patches",
        type=int,
        default=DetectorConfig.tile_bank_patches,
        help="DetectorConfig.tile_bank_patches: patches drawn from the tiles before the coreset",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as the feddymem command does
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.only.split(","))
    data_seed = args.seed if args.data_seed is None else args.data_seed
    cfg = DetectorConfig(
        seed=args.seed, coreset_ratio=args.coreset_ratio, image_size=args.image_size
    )
    if args.backbone is not None:
        cfg = dataclasses.replace(cfg, backbone=args.backbone)
    cfg = dataclasses.replace(cfg, calibration=args.calibration)
    if args.refit:
        cfg = dataclasses.replace(cfg, refit_with_calibration=True)
    if args.tap_balance:
        cfg = dataclasses.replace(cfg, tap_balance=True)
    if args.layers is not None:
        cfg = dataclasses.replace(cfg, layers=tuple(args.layers.split(",")))
    if args.topk_fraction is not None:
        cfg = dataclasses.replace(cfg, topk_fraction=args.topk_fraction)
    cfg = dataclasses.replace(
        cfg,
        tile=args.tile,
        tile_scale=args.tile_scale,
        tile_pad=args.tile_pad,
        tile_border=args.tile_border,
        tile_bank_patches=args.tile_bank_patches,
    )
    # the detector of the elpv, surface, synth and rules parts
    scored: Any = (
        dataclasses.replace(gaussian_like(cfg), tile_gaussians=args.tile_gaussians)
        if args.detector == "padim"
        else cfg
    )
    rows: list[dict[str, object]] = []
    if parts & {"elpv", "synth", "speed", "coreset", "select", "rules"}:
        for cell in ("mono", "poly"):
            export_elpv(args.data_dir / f"elpv-{cell}", cell_type=cell, seed=data_seed)
    if "elpv" in parts:
        for cell in ("mono", "poly"):
            rows.append(run_one(f"elpv-{cell}", args.data_dir / f"elpv-{cell}", scored))
    if "surface" in parts:
        for name in args.surface_sets.split(","):
            if (SHARED / name).is_dir():
                rows.append(run_one(name, SHARED / name, scored))
            else:
                print(json.dumps({"dataset": name, "skipped": f"not found under {SHARED}"}))
    if "synth" in parts:
        from feddymem.data.generated.synth.dataset import synthesize_dataset

        mono = scan(args.data_dir / "elpv-mono")
        target = args.data_dir / "elpv-mono-synth"
        synthesize_dataset(
            [s.path for s in mono.test if s.label == 0],
            target,
            seed=data_seed,
            train=[s.path for s in mono.train],
        )
        rows.append(run_one("elpv-mono-synth", target, scored))
    if rows:
        with (args.out / "detector.jsonl").open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    if "speed" in parts:
        # at 224 x 224 whatever --image-size says; the other options (backbone, taps, ...) apply
        figures = speed(
            args.data_dir / "elpv-mono",
            dataclasses.replace(cfg, keep_aspect=False, image_size=224),
        )
        (args.out / "speed.json").write_text(json.dumps(figures, indent=2))
    if "tilespeed" in parts and (SHARED / "kolektorsdd").is_dir():
        # 1250 x 500 scans (KolektorSDD): fitted on 30 normals, 32 test images scored resized,
        # tiled, and whole at their native 512 px short side
        from tiled_speed import tiled_speed

        kol = scan(SHARED / "kolektorsdd")
        figures = tiled_speed(
            kol.train[:30], kol.test[:32], scored, repeats=2, make=make_detector, native_size=512
        )
        print(json.dumps(figures), flush=True)
        (args.out / "tiled_speed.json").write_text(json.dumps(figures, indent=2))
    if "coreset" in parts:
        lazy_rows = coreset(args.data_dir / "elpv-mono", cfg)
        (args.out / "coreset.json").write_text(json.dumps(lazy_rows, indent=2))
    if "rules" in parts:
        known = GAUSSIAN_RULE_FITS if args.detector == "padim" else RULE_FITS
        rule_fits = (
            list(GAUSSIAN_RULE_FITS)
            if args.detector == "padim" and args.rule_fits == parser.get_default("rule_fits")
            else args.rule_fits.split(",")
        )
        unknown = sorted(set(rule_fits) - set(known))
        if unknown:
            parser.error(f"--rule-fits: unknown {unknown}; known: {sorted(known)}")
        roots = {f"elpv-{cell}": args.data_dir / f"elpv-{cell}" for cell in ("mono", "poly")}
        roots.update({n: SHARED / n for n in args.surface_sets.split(",") if (SHARED / n).is_dir()})
        ruled = [
            row
            for name, root in roots.items()
            for row in rules(name, root, scored, work=args.out / "rules", fits=rule_fits)
        ]
        with (args.out / "rules.jsonl").open("w") as fh:
            for row in ruled:
                fh.write(json.dumps(row) + "\n")
        times = fit_times(
            args.data_dir / "elpv-mono",
            dataclasses.replace(cfg, keep_aspect=False, image_size=224),
            fits=rule_fits,
        )
        (args.out / "rule_fit_times.json").write_text(json.dumps(times, indent=2))
    if "select" in parts:
        roots = {f"elpv-{cell}": args.data_dir / f"elpv-{cell}" for cell in ("mono", "poly")}
        for name in args.surface_sets.split(","):
            if (SHARED / name).is_dir():
                roots[name] = SHARED / name
            else:
                print(json.dumps({"dataset": name, "skipped": f"not found under {SHARED}"}))
        selected = [
            row
            for name, root in roots.items()
            for row in select(name, root, cfg, work=args.out / "validation")
        ]
        with (args.out / "select.jsonl").open("w") as fh:
            for row in selected:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
