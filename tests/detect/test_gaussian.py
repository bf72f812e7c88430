from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from feddymem.config import ConfigError, FedDyMemConfig
from feddymem.data import scan
from feddymem.detect.base import NotFittedError
from feddymem.detect.gaussian import (
    GaussianConfig,
    GaussianDetector,
    PatchMoments,
    central_config,
    estimate_gaussian,
    mahalanobis,
    regularised_precision,
    select_channels,
)
from feddymem.detect.modelfile import ModelFileError
from feddymem.detect.registry import load_detector

CFG = GaussianConfig(image_size=64, batch_size=8, calibration_fraction=0.2)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_texture_tree

    return make_texture_tree(tmp_path_factory.mktemp("tex") / "brick", n_train=15)


@pytest.fixture(scope="module")
def fitted(tree: Path) -> GaussianDetector:
    return GaussianDetector(CFG).fit(scan(tree).train)


def _random_covariances(p: int, d: int, *, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(p, 3 * d, d, generator=gen) @ torch.randn(d, d, generator=gen)
    x = x - x.mean(dim=1, keepdim=True)
    return x.mT @ x / (3 * d - 1)  # (p, d, d), correlated channels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precision_inverts_a_batch(dtype: torch.dtype) -> None:
    # A small batched call first: after one, batched LU inverses go wrong on this build.
    regularised_precision(_random_covariances(2, 3, seed=1).to(dtype), eps=0.01)
    cov = _random_covariances(256, 48, seed=0).to(dtype)
    precision = regularised_precision(cov, eps=0.01)
    assert precision.shape == cov.shape and precision.dtype == dtype
    a = cov.double() + 0.01 * torch.eye(48, dtype=torch.float64)
    err = (a @ precision.double() - torch.eye(48, dtype=torch.float64)).abs().amax()
    assert float(err) < (1e-3 if dtype == torch.float32 else 1e-9)
    assert torch.equal(precision, precision.mT)


def test_precision_refuses_an_indefinite_covariance() -> None:
    cov = torch.eye(4).repeat(3, 1, 1)
    cov[1] = -cov[1]
    with pytest.raises(ValueError, match="1 of 3 covariance"):
        regularised_precision(cov, eps=0.01)


def test_mahalanobis_matches_single_matrix_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(5, 5, generator=gen)
    train = torch.einsum("nehw,de->ndhw", torch.randn(40, 5, 2, 3, generator=gen), mix) + 1.0
    query = torch.randn(3, 5, 2, 3, generator=gen) * 2.0
    eps = 0.01
    mean, precision = estimate_gaussian(train, eps=eps)
    got = mahalanobis(query, mean, precision)
    assert got.shape == (3, 2, 3)

    x, q = train.double().numpy(), query.double().numpy()
    want = np.zeros((3, 2, 3))
    for i in range(2):
        for j in range(3):
            feats = x[:, :, i, j]  # (N, D) at this position
            inv = np.linalg.inv(np.cov(feats, rowvar=False) + eps * np.eye(5))
            delta = q[:, :, i, j] - feats.mean(axis=0)
            want[:, i, j] = np.sqrt(np.einsum("bd,de,be->b", delta, inv, delta))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4)
    # Position j of the grid is row j of mean / precision: a shuffled model scores differently.
    assert not torch.allclose(mahalanobis(query, mean.roll(1, 0), precision.roll(1, 0)), got)


def test_moments_stream_like_one_batch() -> None:
    feats = torch.randn(10, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    whole, parts = PatchMoments(), PatchMoments()
    whole.update(feats)
    for chunk in feats.split(3):
        parts.update(chunk)
    assert parts.count == 10 and parts.grid_hw == (3, 3)
    for a, b in zip(whole.mean_covariance(), parts.mean_covariance(), strict=True):
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="do not match"):
        parts.update(torch.randn(2, 4, 2, 3))
    single = PatchMoments()
    single.update(feats[:1])
    with pytest.raises(ValueError, match="at least 2"):
        single.mean_covariance()
    with pytest.raises(ValueError, match="at least 2"):
        single.gaussians(eps=0.01)


def test_gaussians_by_chunks_of_positions_are_the_whole_grids() -> None:
    """`gaussians` computes a chunk of positions at a time: the same means and precisions,
    to the bit, as one batch of every position (a chunk that does not divide the grid too)."""
    moments = PatchMoments()
    moments.update(torch.randn(12, 5, 4, 5, generator=torch.Generator().manual_seed(3)))
    mean, cov = moments.mean_covariance()
    whole = regularised_precision(cov, eps=0.01).float()
    for chunk in (1, 7, 20, 512):
        got_mean, got_precision = moments.gaussians(eps=0.01, chunk=chunk)
        assert torch.equal(got_mean, mean.float()) and torch.equal(got_precision, whole)


def test_select_channels_is_seeded() -> None:
    assert select_channels(152, None, seed=0) is None
    assert select_channels(152, 152, seed=0) is None
    a = select_channels(152, 50, seed=0)
    assert a is not None and a.shape == (50,)
    assert torch.equal(a, a.sort().values) and a.unique().numel() == 50 and int(a.max()) < 152
    same, other = select_channels(152, 50, seed=0), select_channels(152, 50, seed=1)
    assert same is not None and torch.equal(a, same)
    assert other is not None and not torch.equal(a, other)
    with pytest.raises(ValueError, match="n_features"):
        select_channels(152, 200, seed=0)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="eps"):
        GaussianConfig(eps=0.0)
    with pytest.raises(ConfigError, match="n_features"):
        GaussianConfig(n_features=0)
    with pytest.raises(ConfigError, match="calibration"):
        FedDyMemConfig(calibration="both")  # type: ignore[arg-type]
    assert FedDyMemConfig().calibration is None  # each method's measured default


def test_detector_separates_generated_anomalies(fitted: GaussianDetector, tree: Path) -> None:
    metrics = fitted.evaluate(scan(tree).test)
    assert metrics.image_auroc >= 0.9
    assert metrics.pixel_auroc is not None and metrics.pixel_auroc >= 0.9


def test_fitted_state_and_shapes(fitted: GaussianDetector) -> None:
    d = fitted.extractor.out_channels
    assert fitted.image_hw_ == (64, 64) and fitted.grid_hw_ == (8, 8)
    assert fitted.n_train_ == 12  # 15 normals, 20% held out for the threshold
    assert fitted.mean_ is not None and fitted.mean_.shape == (64, d)
    assert fitted.precision_ is not None and fitted.precision_.shape == (64, d, d)
    assert fitted.channels_ is None and fitted.threshold_ is not None
    out = fitted.score(torch.rand(3, 3, 64, 64))
    assert out.image_scores.shape == (3,) and out.anomaly_maps.shape == (3, 64, 64)
    assert torch.all(torch.isfinite(out.image_scores)) and torch.all(out.image_scores > 0)
    with pytest.raises(ValueError, match="fitted at"):
        fitted.score(torch.rand(1, 3, 32, 64))


def test_channel_subset_and_save_load_round_trip(
    fitted: GaussianDetector, tree: Path, tmp_path: Path
) -> None:
    det = GaussianDetector(GaussianConfig(**{**CFG.__dict__, "n_features": 32}))
    det._extractor = fitted.extractor  # same frozen backbone; tracing another costs seconds
    det.fit(scan(tree).train)
    assert det.channels_ is not None and det.channels_.shape == (32,)
    assert det.mean_ is not None and det.mean_.shape == (64, 32)

    again = load_detector(det.save(tmp_path / "gauss.pt"))
    assert isinstance(again, GaussianDetector)
    assert again.config == det.config and again.threshold_ == det.threshold_
    assert again.map_floor_ == det.map_floor_ is not None
    assert again.channels_ is not None and torch.equal(again.channels_, det.channels_)
    again._extractor = fitted.extractor
    x = torch.rand(2, 3, 64, 64)
    a, b = det.score(x), again.score(x)
    assert torch.equal(a.image_scores, b.image_scores)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)
    assert load_detector(tmp_path / "gauss.pt", kind=GaussianDetector).n_train_ == det.n_train_


def test_unfitted_and_bad_use_raise(fitted: GaussianDetector, tree: Path, tmp_path: Path) -> None:
    det = GaussianDetector(CFG)
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(torch.rand(1, 3, 64, 64))
    with pytest.raises(NotFittedError):
        det.save(tmp_path / "x.pt")
    with pytest.raises(NotFittedError):
        det.evaluate(scan(tree).test)
    with pytest.raises(ValueError, match="normal images only"):
        det.fit(scan(tree).test)
    assert not hasattr(det, "set_memory")  # no memory bank to set

    state = fitted.state()
    del state["precision"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="not a valid gaussian"):
        load_detector(tmp_path / "broken.pt")

    from feddymem.detect.autoencoder import AutoencoderDetector

    path = fitted.save(tmp_path / "gauss.pt")
    with pytest.raises(ModelFileError, match="not a 'autoencoder' one"):
        load_detector(path, kind=AutoencoderDetector)


def test_pooled_site_moments_equal_padim_on_pooled_images(tree: Path) -> None:
    """fed-padim's server sum: three sites' moments added = PaDiM fitted on all their images."""
    cfg = GaussianConfig(image_size=64, batch_size=8, calibration_fraction=0.0, n_features=24)
    train = list(scan(tree).train)
    sites = [train[0:4], train[4:9], train[9:]]
    pooled_det = GaussianDetector(cfg).fit(train)
    parts = [GaussianDetector(cfg).local_moments(site) for site in sites]
    assert [p.moments.count for p in parts] == [4, 5, len(train) - 9]
    merged = PatchMoments.pooled([p.moments for p in parts])
    fed_det = GaussianDetector(cfg).fit_moments(parts[0], pooled=merged)
    assert fed_det.n_train_ == len(train)
    assert pooled_det.mean_ is not None and fed_det.mean_ is not None
    torch.testing.assert_close(fed_det.mean_, pooled_det.mean_, rtol=1e-5, atol=1e-6)
    assert pooled_det.precision_ is not None and fed_det.precision_ is not None
    torch.testing.assert_close(fed_det.precision_, pooled_det.precision_, rtol=1e-4, atol=1e-4)
    # A site's own moments alone give another model.
    own = GaussianDetector(cfg).fit_moments(parts[0])
    assert own.mean_ is not None and not torch.allclose(own.mean_, pooled_det.mean_, atol=1e-3)
    with pytest.raises(ValueError, match="cannot be pooled"):
        small = PatchMoments()
        small.update(torch.randn(2, 24, 3, 3))
        PatchMoments.pooled([parts[0].moments, small])


def test_moments_minus_a_part_are_the_moments_of_the_rest() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    whole, part, rest = PatchMoments(), PatchMoments(), PatchMoments()
    whole.update(torch.cat([a, b]))
    part.update(b)
    rest.update(a)
    left = whole.minus(part)
    assert left.count == 6
    for x, y in zip(left.mean_covariance(), rest.mean_covariance(), strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="do not match"):
        other = PatchMoments()
        other.update(torch.randn(2, 3, 2, 2))
        whole.minus(other)


def test_crossfit_threshold_scores_each_training_image_without_its_fold(tree: Path) -> None:
    """calibration "crossfit": every training image is scored against the Gaussians of the
    moments without its fold, beside the held-out ones; out of fold they score higher than
    against the Gaussians they are in. A fed-padim site does the same against the pooled
    moments, its own folds subtracted."""
    cfg = GaussianConfig(
        image_size=64, batch_size=4, calibration_fraction=0.2, n_features=24, calibration="crossfit"
    )
    train = list(scan(tree).train)
    det = GaussianDetector(cfg).fit(train)
    split = GaussianDetector(cfg).local_moments(train)
    n_train, n_calib = len(split.train), len(split.calib)
    assert len(split.folds) == 3 and sum(f.count for f in split.folds) == n_train
    assert split.features is not None and split.features.shape[0] == n_train
    assert det.calibration_scores_ is not None and det.calibration_scores_.shape == (
        n_train + n_calib,
    )
    in_sample = det.score_samples(list(split.train)).image_scores
    assert det.calibration_scores_[:n_train].mean() > in_sample.mean()
    holdout = GaussianDetector(GaussianConfig(**{**cfg.__dict__, "calibration": "holdout"}))
    holdout.fit(train)
    assert holdout.calibration_scores_ is not None and holdout.calibration_scores_.shape == (
        n_calib,
    )
    torch.testing.assert_close(holdout.mean_, det.mean_)  # the model itself is the same
    # fed-padim: two sites' moments pooled; site one cross-fits against the pooled model
    sites = [train[: len(train) // 2], train[len(train) // 2 :]]
    parts = [GaussianDetector(cfg).local_moments(site) for site in sites]
    pooled = PatchMoments.pooled([p.moments for p in parts])
    site = GaussianDetector(cfg).fit_pooled(sites[0], pooled, image_hw=parts[0].image_hw)
    assert site.calibration_scores_ is not None
    assert site.calibration_scores_.shape == (len(parts[0].train) + len(parts[0].calib),)
    with pytest.raises(ConfigError, match="calibration"):
        GaussianConfig(calibration="both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="calibration_folds"):
        GaussianConfig(calibration_folds=1)


def test_crossfit_too_large_for_its_limit_holds_out_instead(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cross-fit keeps a float64 sum of outer products per fold: past `crossfit_max_mb`
    the fit says so and sets its threshold on a held-out tenth (a central config holds out
    nothing when it cross-fits, so the tenth is split off then)."""
    import dataclasses
    import logging

    base = central_config(GaussianConfig(image_size=64, batch_size=4))
    train = list(scan(tree).train)
    crossed = GaussianDetector(base).fit(train)
    assert crossed.calibration_folds_ == 10
    # 10 folds x 64 positions x 152^2 x 8 B = 113 MB of sums (and 0.6 MB of features)
    small = dataclasses.replace(base, crossfit_max_mb=100.0)
    with caplog.at_level(logging.WARNING, logger="feddymem.detect.gaussian"):
        held = GaussianDetector(small).fit(train)
    assert any("the cross-fit would hold 113 MB" in r.message for r in caplog.records)
    assert held.calibration_folds_ == 0 and held.calibration_scores_ is not None
    n_calib = held.calibration_scores_.shape[0]
    assert n_calib == round(0.1 * len(train)) and held.n_train_ == len(train) - n_calib
    with pytest.raises(ConfigError, match="crossfit_max_mb"):
        GaussianConfig(crossfit_max_mb=0.0)


def test_cli_fit_defaults_to_padim_cross_fitted_and_evaluate_predict_read_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from tests.conftest import make_texture_tree

    from feddymem.cli import main

    root = make_texture_tree(tmp_path / "brick", n_train=20, n_good=4, n_bad=4)
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.pt"
    assert main(["fit", "--data", str(root), "--out", str(model), "--image-size", "64"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["detector"] == "padim" and fitted["calibration_folds"] == 10
    assert fitted["gaussians"] == 8 * 8 and fitted["image_hw"] == [64, 64]
    det = load_detector(model)
    assert isinstance(det, GaussianDetector) and det.n_train_ == 20  # no tenth held out
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["image_auroc"] > 0.5 and metrics["at_threshold"]["normals"] == 4
    out = tmp_path / "pred"
    folders = [str(d) for d in sorted((root / "test").iterdir())]
    assert main(["predict", "--model", str(model), *folders, "--out", str(out)]) == 0
    assert len(list(out.rglob("*_overlay.png"))) == 8
    # a PatchCore option with PaDiM: one line naming it, nothing written
    again = tmp_path / "n.pt"
    argv = ["fit", "--data", str(root), "--out", str(again), "--coreset-ratio", "0.5"]
    assert main(argv) == 2
    assert "--coreset-ratio applies to --detector patchcore" in capsys.readouterr().err
    assert not again.exists()
