"""A tiled detector: small defects in large images, shapes, the model file, the rule's choice."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feddymem.config import ConfigError, DetectorConfig, FeatureConfig
from feddymem.data import scan
from feddymem.detect.detector import PatchCoreDetector
from feddymem.detect.gaussian import GaussianDetector, central_config
from feddymem.detect.modelfile import ModelFileError
from feddymem.detect.registry import load_detector

# tiles of 64 px (the input size) overlapping by 16 px; a 160 px image is 3 x 3 tiles, where
# resizing it to 64 px shrinks a 7 px spot to under 3 px
CFG = DetectorConfig(
    image_size=64,
    batch_size=16,
    coreset_ratio=0.1,
    calibration_fraction=0.25,
    tile="on",
    tile_overlap=16,
)


def make_large_tree(root: Path, *, size: int = 160, n: int = 8, radius: int = 3) -> Path:
    """Native-resolution crops of a texture; anomalies are small bright or dark discs."""
    from skimage import data as skdata

    tex = skdata.brick()
    rng = np.random.default_rng(0)
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True, exist_ok=True)

    def crop() -> np.ndarray:
        y, x = rng.integers(0, tex.shape[0] - size), rng.integers(0, tex.shape[1] - size)
        return tex[y : y + size, x : x + size].copy()

    for i in range(n):
        Image.fromarray(crop()).save(root / "train" / "good" / f"{i:03d}.png")
    for i in range(n):
        Image.fromarray(crop()).save(root / "test" / "good" / f"{i:03d}.png")
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = crop().astype(np.float32)
        cy, cx = rng.integers(size // 8, 7 * size // 8, size=2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        img[mask] = 255.0 if i % 2 == 0 else 0.0
        Image.fromarray(img.astype(np.uint8)).save(root / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(
            root / "ground_truth" / "spot" / f"{i:03d}_mask.png"
        )
    return root


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[PatchCoreDetector, Path]:
    root = make_large_tree(tmp_path_factory.mktemp("large") / "brick")
    return PatchCoreDetector(CFG).fit(scan(root).train), root


def test_tiled_detector_finds_small_spots_that_resizing_loses(
    large: tuple[PatchCoreDetector, Path],
) -> None:
    tiled, root = large
    resized = PatchCoreDetector(dataclasses.replace(CFG, tile="off")).fit(scan(root).train)
    m_tiled = tiled.evaluate(scan(root).test)
    m_resized = resized.evaluate(scan(root).test)
    assert resized.image_hw_ == (64, 64) and resized.tiling_ is None
    assert m_tiled.image_auroc >= 0.9
    assert m_tiled.image_auroc >= m_resized.image_auroc + 0.15
    assert m_tiled.pixel_auroc is not None and m_resized.pixel_auroc is not None
    assert m_tiled.pixel_auroc >= max(0.9, m_resized.pixel_auroc)


def test_tiled_fit_state_and_score_shapes(large: tuple[PatchCoreDetector, Path]) -> None:
    det, _ = large
    assert det.tiling_ is not None and det.image_hw_ == (160, 160)
    assert (det.tiling_.tile, det.tiling_.overlap) == (64, 16)
    grid = det.tiling_.grid(det.extractor.stride)
    assert grid.n_tiles == 9
    # 8 training images (too few to hold some out) x 9 tiles x 8 x 8 patches
    assert det.n_patches_ == 8 * 9 * 64
    result = det.score(torch.rand(2, 3, 160, 160))
    assert result.image_scores.shape == (2,) and result.anomaly_maps.shape == (2, 160, 160)
    assert torch.isfinite(result.anomaly_maps).all()
    with pytest.raises(ValueError, match="fitted at"):
        det.score(torch.rand(1, 3, 64, 64))


def test_tiled_bank_is_bounded(
    large: tuple[PatchCoreDetector, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, root = large
    det = PatchCoreDetector(dataclasses.replace(CFG, tile_bank_patches=1024))
    assert det.config.calibration == "crossfit"  # the default: a tiled fit holds out instead
    with caplog.at_level(logging.INFO, logger="feddymem.detect.detector"):
        det.fit(scan(root).train)
    assert any(
        "tiled fit: the threshold comes from a held-out" in r.message for r in caplog.records
    )
    assert det.n_patches_ is not None and 1000 <= det.n_patches_ <= 1100


def test_tiled_model_file_round_trip(large: tuple[PatchCoreDetector, Path], tmp_path: Path) -> None:
    det, _ = large
    path = det.save(tmp_path / "tiled.pt")
    back = load_detector(path)
    assert back.tiling_ == det.tiling_ and back.image_hw_ == det.image_hw_
    images = torch.rand(2, 3, 160, 160)
    assert torch.allclose(back.score(images).anomaly_maps, det.score(images).anomaly_maps)
    state = torch.load(path, weights_only=True)
    state["tiling"] = [64, 64]  # overlap as large as the tile
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="tiling"):
        load_detector(tmp_path / "bad.pt")


def test_padded_bordered_tiled_detector_round_trip(
    large: tuple[PatchCoreDetector, Path], tmp_path: Path
) -> None:
    """A pad (images mirrored outwards before tiling) and an image border (the edge band left
    out of the image score) are saved with the model and restored; the image score is the
    top-k of the interior's patch scores."""
    _, root = large
    cfg = dataclasses.replace(CFG, tile_pad=32, tile_border="on")
    det = PatchCoreDetector(cfg).fit(scan(root).train)
    assert det.tiling_ is not None and det.tiling_.pad == 32
    assert det.tiling_.grid(det.extractor.stride).n_tiles == 25  # 224 px, steps of 48: 5 x 5
    band = 2 * det.extractor.coarse_stride
    assert det.image_border_ == band
    images = torch.rand(2, 3, 160, 160)
    result = det.score(images)
    assert result.anomaly_maps.shape == (2, 160, 160)
    c = band // det.extractor.stride
    inner = det.image_patch_scores(images)[:, c:-c, c:-c].flatten(1)
    k = max(1, round(cfg.topk_fraction * inner.shape[1]))
    assert torch.allclose(result.image_scores, inner.topk(k, dim=1).values.mean(dim=1))
    path = det.save(tmp_path / "padded.pt")
    back = load_detector(path)
    assert back.tiling_ == det.tiling_ and back.image_border_ == band
    assert torch.allclose(back.score(images).image_scores, result.image_scores)
    state = torch.load(path, weights_only=True)
    state["image_border"] = 80  # no interior left in a 160 px image
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="image_border"):
        load_detector(tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="tile_pad"):
        DetectorConfig(tile_pad=40)
    with pytest.raises(ConfigError, match="tile_border"):
        DetectorConfig(tile_border="edge")  # type: ignore[arg-type]


def test_tile_border_auto_keeps_the_band_of_an_even_texture(
    large: tuple[PatchCoreDetector, Path],
) -> None:
    """Brick crops have no edge of their own: the rule keeps the band (the default, auto)."""
    det, _ = large
    assert det.config.tile_border == "auto" and det.image_border_ == 0


def test_auto_resizes_images_near_the_input_size(texture_tree: Path) -> None:
    det = PatchCoreDetector(dataclasses.replace(CFG, tile="auto")).fit(scan(texture_tree).train)
    assert det.tiling_ is None and det.image_hw_ == (64, 64)


def test_tiling_refuses_refit() -> None:
    with pytest.raises(ConfigError, match="tiling"):
        dataclasses.replace(CFG, refit_with_calibration=True)


@pytest.mark.parametrize(("positions", "grid"), [("auto", (20, 20)), ("tile", (8, 8))])
def test_tiled_padim_finds_small_spots_and_round_trips(
    large: tuple[PatchCoreDetector, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    positions: str,
    grid: tuple[int, int],
) -> None:
    """PaDiM tiled: a Gaussian per position of the native image (the tiles' features stitched;
    what "auto" picks for a model this small) or per position within a tile, shared by all
    tiles; cross-fitted by image (an image's tiles in one fold), every training image scored
    out of its fold; the plan and the choice are saved and restored."""
    _, root = large
    base = FeatureConfig(**{f: getattr(CFG, f) for f in FeatureConfig.__dataclass_fields__})
    # four folds of two images: the central default's ten would leave folds empty here
    cfg = dataclasses.replace(central_config(base, calibration_folds=4), tile_gaussians=positions)
    with caplog.at_level(logging.INFO, logger="feddymem.detect.gaussian"):
        tiled = GaussianDetector(cfg).fit(scan(root).train)
    messages = [r.message for r in caplog.records]
    assert any(m.startswith("tiled PaDiM: a Gaussian per position") for m in messages)
    assert tiled.tiling_ is not None and tiled.image_hw_ == (160, 160)
    assert tiled.grid_hw_ == grid and tiled.calibration_folds_ == 4
    assert tiled.calibration_scores_ is not None and tiled.calibration_scores_.shape == (8,)
    # out of fold, the training images score higher than against Gaussians they are in
    in_sample = tiled.score_samples(list(scan(root).train)).image_scores
    assert tiled.calibration_scores_.mean() > in_sample.mean()
    assert tiled.tile_gaussians_ == ("image" if positions == "auto" else "tile")
    resized = GaussianDetector(central_config(dataclasses.replace(base, tile="off")))
    resized.fit(scan(root).train)
    m_tiled, m_resized = tiled.evaluate(scan(root).test), resized.evaluate(scan(root).test)
    # the spots are found where resizing loses them; the image scores gain less with a
    # Gaussian per native position of eight randomly placed crops
    assert m_tiled.pixel_auroc is not None and m_resized.pixel_auroc is not None
    assert m_tiled.pixel_auroc >= max(0.9, m_resized.pixel_auroc + 0.15)
    assert m_tiled.image_auroc > m_resized.image_auroc
    path = tiled.save(tmp_path / "padim_tiled.pt")
    back = load_detector(path)
    assert isinstance(back, GaussianDetector) and back.tiling_ == tiled.tiling_
    assert back.tile_gaussians_ == tiled.tile_gaussians_
    images = torch.rand(2, 3, 160, 160)
    assert torch.allclose(back.score(images).anomaly_maps, tiled.score(images).anomaly_maps)
    state = torch.load(path, weights_only=True)
    state["tile_gaussians"] = "pixel"
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="tile_gaussians"):
        load_detector(tmp_path / "bad.pt")


def test_cli_fit_tiles_padim_and_predict_draws_it(
    large: tuple[PatchCoreDetector, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from feddymem.cli import main

    _, root = large
    model = tmp_path / "m.pt"
    argv = ["fit", "--data", str(root), "--out", str(model), "--image-size", "64"]
    assert main([*argv, "--tile", "on", "--tile-overlap", "16"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["detector"] == "padim" and fitted["calibration_folds"] == 0
    assert fitted["tiling"] == {
        "tile": 64,
        "overlap": 16,
        "pad": 0,
        "tiles_per_image": 9,
        "gaussians": "image",  # auto: 20 x 20 positions of precisions fit in 1 GB
    }
    assert fitted["gaussians"] == 20 * 20 and fitted["image_hw"] == [160, 160]
    out = tmp_path / "pred"
    assert (
        main(["predict", "--model", str(model), str(root / "test" / "spot"), "--out", str(out)])
        == 0
    )
    overlays = sorted(out.rglob("*_overlay.png"))
    assert len(overlays) == 8 and all(min(Image.open(p).size) >= 160 for p in overlays)
    # PaDiM's choice of Gaussians is no PatchCore option: one line naming it, nothing written
    again = tmp_path / "n.pt"
    patchcore = ["fit", "--data", str(root), "--out", str(again), "--detector", "patchcore"]
    assert main([*patchcore, "--tile", "on", "--tile-gaussians", "tile"]) == 2
    assert "--tile-gaussians applies to --detector padim" in capsys.readouterr().err
    assert not again.exists()


def test_tiled_padim_cross_fit_takes_the_border_band_from_out_of_fold_maps(
    large: tuple[PatchCoreDetector, Path],
) -> None:
    """With the band forced (`tile_border="on"`), the cross-fitted normals' image scores are
    read from the interior: the band is set and the threshold's scores move."""
    _, root = large
    base = FeatureConfig(**{f: getattr(CFG, f) for f in FeatureConfig.__dataclass_fields__})
    fits = {
        mode: GaussianDetector(
            dataclasses.replace(
                central_config(dataclasses.replace(base, tile_border=mode), calibration_folds=4),
                tile_gaussians="tile",
            )
        ).fit(scan(root).train)
        for mode in ("off", "on")
    }
    off, on = fits["off"], fits["on"]
    assert off.image_border_ == 0 and on.image_border_ == 2 * on.extractor.coarse_stride
    assert off.calibration_folds_ == on.calibration_folds_ == 4
    assert off.calibration_scores_ is not None and on.calibration_scores_ is not None
    assert not np.allclose(off.calibration_scores_, on.calibration_scores_)
