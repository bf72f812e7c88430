"""`benchmarks/detector.py --only speed` on a tiny tree: the figures it prints hold together."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

from feddymem.allocator import keeping_freed_memory
from feddymem.config import DetectorConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_detector", REPO / "benchmarks" / "detector.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_pairs_its_timings_and_checks_the_search(bench, texture_tree: Path) -> None:
    cfg = DetectorConfig(keep_aspect=False, image_size=224, coreset_ratio=0.05)
    out = bench.speed(texture_tree, cfg, n_fit=12, n_score=32, repeats=3)
    # one paired ratio a repeat, and the reported overheads are their medians
    for key in ("detector_overhead", "detector_overhead_without_decode"):
        runs = out[f"{key}_runs"]
        assert len(runs) == 3
        assert out[key] == pytest.approx(statistics.median(runs), abs=1e-3)
    assert out["scored_images"] == 32
    assert out["knn_queries"] == 32 * 28 * 28
    # the detector's screen is exact: no query differs from the float64 brute force
    assert out["knn_queries_differing_from_float64"]["knn"] == 0
    approximate = out["knn_approximate"]
    assert set(approximate) == {
        f"knn_faiss_ivf{cells}_probe{probes}" for cells, probes in bench.IVF_SETTINGS
    }
    for figures in approximate.values():
        assert 0 <= figures["queries_differing"] <= out["knn_queries"]
        assert figures["distance_excess"] >= 0.0
    # probing more cells can only find nearer items
    assert (
        approximate["knn_faiss_ivf32_probe4"]["queries_differing"]
        <= approximate["knn_faiss_ivf32_probe1"]["queries_differing"]
    )
    # what the kernel did while scoring, and the allocator setting it ran under, as this
    # process has it (the report only asks)
    assert out["scoring_minor_page_faults"] >= 0
    assert out["scoring_system_s"] >= 0.0 and out["scoring_user_s"] > 0.0
    assert out["allocator_keeps_freed_memory"] is keeping_freed_memory()
    # the bfloat16 product timed over fewer feature dimensions too (too quick here to compare)
    for d in bench.PRODUCT_DIMS:
        assert out["stage_share_of_forward"][f"knn_bf16_product_d{d}"] >= 0.0


def test_select_scores_each_setting_on_held_out_normals_and_the_test_set(
    bench, tmp_path: Path
) -> None:
    from tests.conftest import make_texture_tree

    root = make_texture_tree(tmp_path / "brick", n_train=20, size=96)
    cfg = DetectorConfig(keep_aspect=False, image_size=96, coreset_ratio=0.05)
    settings = {"default": {}, "tap_balance": {"tap_balance": True}}
    rows = bench.select("brick", root, cfg, work=tmp_path / "validation", settings=settings)
    assert [r["setting"] for r in rows] == ["default", "tap_balance"]
    for row in rows:
        # a fifth of train/good held out (half of it with synthetic anomalies), the rest fitted
        assert row["fit_images"] == 16
        assert row["validation_good"] + row["validation_synthetic"] == 4
        assert row["validation_synthetic"] >= 1 and row["validation_good"] >= 1
        assert 0.0 <= row["val_image_auroc"] <= 1.0 and row["val_aupro"] is not None
        # the test figures come from a fit on all of train/good
        assert row["train_images"] == 20 and 0.0 <= row["image_auroc"] <= 1.0
    picked = [r for r in rows if r["picked"]]
    assert len(picked) == 1
    assert picked[0]["val_image_auroc"] == max(r["val_image_auroc"] for r in rows)
    # the synthetic validation set lies outside the data set's own folders
    assert (tmp_path / "validation" / "brick" / "test").is_dir()
