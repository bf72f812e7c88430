from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from feddymem.config import DetectorConfig
from feddymem.data import scan
from feddymem.detect.base import NotFittedError
from feddymem.detect.detector import PatchCoreDetector, patch_scores, tap_balance_scale
from feddymem.detect.modelfile import ModelFileError
from feddymem.detect.registry import load_detector

# holdout: these tests count the held-out tenth (the crossfit default has its own tests)
CFG = DetectorConfig(
    image_size=64, batch_size=8, coreset_ratio=0.1, calibration_fraction=0.2, calibration="holdout"
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[PatchCoreDetector, Path]:
    from tests.conftest import make_texture_tree

    root = make_texture_tree(tmp_path_factory.mktemp("tex") / "brick", n_train=15)
    return PatchCoreDetector(CFG).fit(scan(root).train), root


def test_detector_separates_generated_anomalies(fitted: tuple[PatchCoreDetector, Path]) -> None:
    det, root = fitted
    metrics = det.evaluate(scan(root).test)
    assert metrics.image_auroc >= 0.9
    assert metrics.pixel_auroc is not None and metrics.pixel_auroc >= 0.9
    assert metrics.aupro is not None and 0.0 < metrics.aupro <= 1.0


def test_fitted_state_and_shapes(fitted: tuple[PatchCoreDetector, Path]) -> None:
    det, _ = fitted
    assert det.image_hw_ == (64, 64)
    assert det.memory_ is not None and det.n_patches_ is not None
    # 15 normals, 20% held out for the threshold: 12 images x 8 x 8 patches, 10% kept.
    assert det.n_patches_ == 12 * 64
    assert det.memory_.shape == (round(0.1 * 12 * 64), det.extractor.out_channels)
    images = torch.rand(3, 3, 64, 64)
    result = det.score(images)
    assert result.image_scores.shape == (3,) and result.anomaly_maps.shape == (3, 64, 64)
    assert torch.all(torch.isfinite(result.image_scores)) and torch.all(result.image_scores > 0)
    det_max = PatchCoreDetector(DetectorConfig(**{**CFG.__dict__, "image_score": "max"}))
    det_max.set_memory(det.memory_, image_hw=(64, 64))
    out = det_max.score(images)
    assert torch.allclose(out.image_scores, out.anomaly_maps.amax(dim=(1, 2)))
    with pytest.raises(ValueError, match="fitted at"):
        det.score(torch.rand(1, 3, 32, 64))


def test_threshold_comes_from_held_out_normals(fitted: tuple[PatchCoreDetector, Path]) -> None:
    det, root = fitted
    assert det.threshold_ is not None
    split = scan(root)
    scores = det.score_samples(split.test)
    normal = scores.image_scores[scores.labels == 0]
    # Most unseen normal images stay under a threshold set on other normal images.
    assert np.mean(normal <= det.threshold_) >= 0.5
    # the heat maps' floor is the held-out normals' median map value: under the threshold, and
    # about half of the unseen normal images' map values lie above it
    assert det.map_floor_ is not None and det.map_floor_ < det.threshold_
    maps = det.score_samples([s for s in split.test if s.label == 0], keep_maps=True).anomaly_maps
    assert maps is not None
    assert 0.2 <= float(np.mean(maps > det.map_floor_)) <= 0.8


def test_refit_puts_the_held_out_normals_in_the_bank_after_the_threshold(
    fitted: tuple[PatchCoreDetector, Path], tmp_path: Path
) -> None:
    det, root = fitted
    refit = PatchCoreDetector(DetectorConfig(**{**CFG.__dict__, "refit_with_calibration": True}))
    refit.fit(scan(root).train)
    # The threshold was set before the refit, on the same held-out images against the same
    # bank; the memory then comes from all 15 images.
    assert refit.threshold_ == pytest.approx(det.threshold_, rel=1e-6)
    assert refit.map_floor_ == pytest.approx(det.map_floor_, rel=1e-6)
    assert refit.n_patches_ == 15 * 64
    assert refit.memory_ is not None
    assert refit.memory_.shape == (round(0.1 * 15 * 64), refit.extractor.out_channels)
    refit.save(tmp_path / "refit.pt")  # the option is part of the model's settings
    assert load_detector(tmp_path / "refit.pt").config.refit_with_calibration


def test_save_load_round_trip(fitted: tuple[PatchCoreDetector, Path], tmp_path: Path) -> None:
    det, _ = fitted
    path = det.save(tmp_path / "model.pt")
    again = load_detector(path)
    assert isinstance(again, PatchCoreDetector)
    assert again.config == det.config and again.threshold_ == det.threshold_
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(again.score(x).anomaly_maps, det.score(x).anomaly_maps)
    assert again.map_floor_ == det.map_floor_
    # a file saved before the map floor existed still loads (its heat maps start at zero); a
    # broken one is refused with the file's name
    state = torch.load(path, weights_only=True)
    del state["map_floor"]
    torch.save(state, tmp_path / "older.pt")
    assert load_detector(tmp_path / "older.pt").map_floor_ is None
    state["map_floor"] = float("nan")
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match=r"broken\.pt: map_floor must be a finite number"):
        load_detector(tmp_path / "broken.pt")


def test_calibration_scores_set_the_threshold_and_travel_with_the_model(
    fitted: tuple[PatchCoreDetector, Path], tmp_path: Path
) -> None:
    det, _ = fitted
    # 15 normals, 20% held out: their 3 scores are kept, and the threshold is their quantile at
    # the nominal false-alarm rate (2%)
    assert det.calibration_scores_ is not None and det.calibration_scores_.shape == (3,)
    assert det.threshold_ == pytest.approx(float(np.quantile(det.calibration_scores_, 0.98)))
    assert det.thresholds_at()[0.02] == pytest.approx(det.threshold_)
    again = load_detector(det.save(tmp_path / "m.pt"))
    assert again.calibration_scores_ is not None
    assert np.array_equal(again.calibration_scores_, det.calibration_scores_)
    # an older file without them loads, with no thresholds for other rates; a broken one is
    # refused with the file's name
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    del state["calibration_scores"]
    torch.save(state, tmp_path / "older.pt")
    older = load_detector(tmp_path / "older.pt")
    assert older.calibration_scores_ is None and older.thresholds_at() == {}
    state["calibration_scores"] = torch.tensor([[1.0, float("nan")]])
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match=r"broken\.pt: calibration_scores"):
        load_detector(tmp_path / "broken.pt")


def test_the_tail_rule_sets_the_threshold_from_the_same_normals(
    fitted: tuple[PatchCoreDetector, Path],
) -> None:
    from feddymem.detect.threshold import genpareto_threshold

    det, root = fitted
    tail = PatchCoreDetector(DetectorConfig(**{**CFG.__dict__, "threshold_rule": "genpareto"}))
    tail.fit(scan(root).train)
    assert tail.calibration_scores_ is not None and det.calibration_scores_ is not None
    assert np.array_equal(tail.calibration_scores_, det.calibration_scores_)
    assert tail.threshold_ == pytest.approx(
        genpareto_threshold(tail.calibration_scores_, false_alarm_rate=0.02)
    )


def test_bad_model_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_detector(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a feddymem model file"):
        load_detector(junk)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a feddymem model"):
        load_detector(tmp_path / "other.pt")


def test_unfitted_detector_raises() -> None:
    with pytest.raises(NotFittedError):
        PatchCoreDetector(CFG).score(torch.rand(1, 3, 64, 64))


def test_fit_refuses_anomalous_images(texture_tree: Path) -> None:
    split = scan(texture_tree)
    with pytest.raises(ValueError, match="normal images only"):
        PatchCoreDetector(CFG).fit(list(split.train) + [s for s in split.test if s.label == 1])


def test_patch_scores_nearest_and_softmin() -> None:
    d = torch.tensor([[1.0, 2.0, 3.0], [0.5, 5.0, 9.0]])
    assert torch.equal(patch_scores(d, scoring="nearest"), torch.tensor([1.0, 0.5]))
    soft = patch_scores(d, scoring="softmin")
    assert torch.all(soft >= d[:, 0]) and torch.all(soft <= d[:, -1])
    with pytest.raises(ValueError, match="unknown scoring"):
        patch_scores(d, scoring="median")


def test_cli_fit_evaluate_predict(
    texture_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from feddymem.cli import main
    from feddymem.detect.overlay import _legend_layout

    monkeypatch.chdir(tmp_path)  # overlays keep the inputs' paths relative to here

    model = tmp_path / "m.pt"
    assert (
        main(
            [
                "fit",
                "--data",
                str(texture_tree),
                "--out",
                str(model),
                "--image-size",
                "64",
                "--detector",
                "patchcore",
                "--coreset-ratio",
                "0.1",
            ]
        )
        == 0
    )
    fit_out = json.loads(capsys.readouterr().out)
    assert fit_out["memory_items"] > 0 and fit_out["image_hw"] == [64, 64]
    assert main(["evaluate", "--model", str(model), "--data", str(texture_tree), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"image_auroc", "pixel_auroc", "aupro", "f1_max"} <= set(metrics)
    defects = {d.name: len(list(d.iterdir())) for d in (texture_tree / "test").iterdir()}
    defects.pop("good")
    assert {k: v["n"] for k, v in metrics["per_defect"].items()} == defects
    assert all(0.0 <= v["image_auroc"] <= 1.0 for v in metrics["per_defect"].values())
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # an image of another size than the model's input: its overlay keeps the file's own size
    from PIL import Image

    spot = sorted((texture_tree / "test" / "spot").iterdir())[0]
    wide = tmp_path / "wide.png"
    Image.open(spot).resize((96, 40)).save(wide)
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model),
                str(texture_tree / "test" / "spot"),
                str(wide),
                str(bad),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "scores.csv").open()))
    scored = [r for r in rows if r["score"]]
    assert len(scored) == 7 and all((out / r["overlay"]).is_file() for r in scored)
    # each picture at its file's own size, its legend below it
    canvas_w, legend_h, _ = _legend_layout(96)
    assert Image.open(out / "wide_overlay.png").size == (canvas_w, 40 + legend_h)
    spot_overlay = out / "brick" / "test" / "spot" / f"{spot.stem}_overlay.png"
    w, h = Image.open(spot).size
    canvas_w, legend_h, _ = _legend_layout(w)
    assert Image.open(spot_overlay).size == (canvas_w, h + legend_h)
    scored = [r for r in scored if r["path"] != str(wide)]
    # evaluate's operating point is predict's decisions: on the anomalous folder, the images
    # predict flags are the recall of the model's threshold
    point = metrics["at_threshold"]
    assert point["threshold"] == pytest.approx(float(scored[0]["threshold"]), rel=1e-6)
    flagged = sum(int(r["anomalous"]) for r in scored)
    assert point["recall"] == pytest.approx(flagged / len(scored))
    assert 0.0 <= point["false_alarm_rate"] <= 1.0
    low, high = point["false_alarm_rate_ci95"]
    assert 0.0 <= low <= point["false_alarm_rate"] <= high <= 1.0
    assert point["normals"] == len(list((texture_tree / "test" / "good").iterdir()))
    assert point["oracle_recall"] >= point["recall"]  # no threshold with as few alarms does worse
    # thresholds for 1%, 2%, 5% false alarms from the normals kept at fit: lower for more alarms
    at_far = metrics["at_far"]
    assert list(at_far) == ["0.01", "0.02", "0.05"]
    assert at_far["0.01"]["threshold"] >= at_far["0.02"]["threshold"] >= at_far["0.05"]["threshold"]
    assert at_far["0.05"]["recall"] >= at_far["0.01"]["recall"]
    skipped = [r for r in rows if not r["score"]]
    assert len(skipped) == 1 and "broken.png" in skipped[0]["path"]


def test_cli_reports_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from feddymem.cli import main

    assert main(["fit", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_shared_extractor_is_used_and_a_mismatched_one_refused() -> None:
    from feddymem.detect.features import PatchFeatureExtractor

    shared = PatchFeatureExtractor(backbone="efficientnet_lite0")
    det = PatchCoreDetector(DetectorConfig(), extractor=shared)
    assert det.extractor is shared
    other_taps = tuple(reversed(shared.layers))[:1]
    with pytest.raises(ValueError, match="not the one the config asks for"):
        PatchCoreDetector(DetectorConfig(layers=other_taps), extractor=shared)


def test_knn_backends_score_alike(fitted: tuple[PatchCoreDetector, Path]) -> None:
    import dataclasses

    det, root = fitted
    assert det.config.knn_backend == "torch"  # the default
    other = PatchCoreDetector(
        dataclasses.replace(det.config, knn_backend="faiss"), extractor=det.extractor
    )
    assert det.memory_ is not None and det.image_hw_ is not None
    other.set_memory(det.memory_, image_hw=det.image_hw_)
    images = next(iter(det.batches(scan(root).test))).images
    a, b = det.score(images), other.score(images)
    torch.testing.assert_close(a.image_scores, b.image_scores)
    torch.testing.assert_close(a.anomaly_maps, b.anomaly_maps)


def test_tap_balance_equalises_the_taps_and_travels_with_the_model(tmp_path: Path) -> None:
    from tests.conftest import make_texture_tree

    # Two "taps": 2 channels of variance 100 and 3 of variance 1 -> factors 0.1 and 1.
    gen = torch.Generator().manual_seed(0)
    bank = torch.cat(
        [torch.randn(4096, 2, generator=gen) * 10, torch.randn(4096, 3, generator=gen)], 1
    )
    scale = tap_balance_scale(bank, (2, 3))
    balanced = (bank * scale).var(dim=0)
    assert balanced[:2].mean() == pytest.approx(1.0, rel=0.1)
    assert balanced[2:].mean() == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="do not make"):
        tap_balance_scale(bank, (2, 2))
    with pytest.raises(ValueError, match="constant"):
        tap_balance_scale(torch.ones(64, 5), (2, 3))

    root = make_texture_tree(tmp_path / "brick", n_train=15)
    det = PatchCoreDetector(DetectorConfig(**{**CFG.__dict__, "tap_balance": True}))
    det.fit(scan(root).train)
    assert det.feature_scale_ is not None
    channels = det.extractor.tap_channels
    assert det.feature_scale_.shape == (sum(channels),)
    # one factor per tap, and the memory lives in the balanced space
    assert len(set(det.feature_scale_[: channels[0]].tolist())) == 1
    assert len(set(det.feature_scale_.tolist())) == len(channels)
    images = torch.rand(2, 3, 64, 64)
    before = det.score(images).image_scores
    det.save(tmp_path / "bal.pt")
    loaded = load_detector(tmp_path / "bal.pt")
    assert loaded.feature_scale_ is not None
    assert torch.equal(loaded.feature_scale_, det.feature_scale_)
    assert torch.allclose(loaded.score(images).image_scores, before)
    # a tampered scale is refused with the file's name
    state = torch.load(tmp_path / "bal.pt", weights_only=True)
    state["feature_scale"] = state["feature_scale"][:3]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match=r"bad\.pt: feature_scale"):
        load_detector(tmp_path / "bad.pt")


@pytest.fixture
def searched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of queries of every nearest-neighbour search the detector module runs."""
    import feddymem.detect.detector as detector_module

    counts: list[int] = []

    class Counting(detector_module.NearestNeighbors):
        def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            counts.append(int(queries.shape[0]))
            return super().search(queries, k)

    monkeypatch.setattr(detector_module, "NearestNeighbors", Counting)
    return counts


def test_crossfit_calibration_scores_every_training_image_once_out_of_its_fold(
    fitted: tuple[PatchCoreDetector, Path], searched: list[int]
) -> None:
    from feddymem.config import ConfigError

    _, root = fitted
    cfg = DetectorConfig(**{**CFG.__dict__, "calibration": "crossfit", "calibration_folds": 3})
    det = PatchCoreDetector(cfg).fit(scan(root).train)
    # no image held out of the bank; each of the 15 images scored once, in 3 folds of 5
    assert det.n_patches_ == 15 * 64
    assert det.memory_ is not None and det.memory_.shape[0] == round(0.1 * 15 * 64)
    assert searched == [5 * 64] * 3
    assert det.threshold_ is not None and det.map_floor_ is not None
    # out of fold, the training images score higher than against the bank that holds them
    in_sample = det.score_samples(scan(root).train).image_scores
    assert det.threshold_ > float(np.quantile(in_sample, 0.99))
    again = PatchCoreDetector(cfg).fit(scan(root).train)
    assert again.threshold_ == det.threshold_  # seeded
    # the default (docs/detector.md, the operating point): three folds
    assert (DetectorConfig().calibration, DetectorConfig().calibration_folds) == ("crossfit", 3)
    with pytest.raises(ConfigError, match="refit_with_calibration applies to holdout"):
        DetectorConfig(calibration="crossfit", refit_with_calibration=True)
    with pytest.raises(ConfigError, match="calibration_folds"):
        DetectorConfig(calibration="crossfit", calibration_folds=1)


def test_size_corrected_crossfit_scores_each_fold_against_one_more_bank_and_lowers_scores(
    fitted: tuple[PatchCoreDetector, Path], searched: list[int]
) -> None:
    from feddymem.config import ConfigError

    _, root = fitted
    base = {**CFG.__dict__, "calibration": "crossfit", "calibration_folds": 3}
    plain = PatchCoreDetector(DetectorConfig(**base)).fit(scan(root).train)
    searched.clear()
    sized = PatchCoreDetector(DetectorConfig(**{**base, "crossfit_correction": "size"})).fit(
        scan(root).train
    )
    # each fold of 5 images against two banks: the other two folds', then the next fold's
    assert searched == [5 * 64] * 6
    assert plain.calibration_scores_ is not None and sized.calibration_scores_ is not None
    # the same memory; every score carried down to the whole bank's size, or kept
    assert torch.equal(plain.memory_, sized.memory_)
    assert np.all(sized.calibration_scores_ <= plain.calibration_scores_)
    assert np.any(sized.calibration_scores_ < plain.calibration_scores_)
    assert sized.threshold_ is not None and plain.threshold_ is not None
    assert sized.threshold_ < plain.threshold_
    assert DetectorConfig().crossfit_correction == "none"
    with pytest.raises(ConfigError, match="needs calibration_folds >= 3"):
        DetectorConfig(crossfit_correction="size", calibration_folds=2)
    with pytest.raises(ConfigError, match="crossfit_correction must be"):
        DetectorConfig(crossfit_correction="sizes")  # type: ignore[arg-type]
