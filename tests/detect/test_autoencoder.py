from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from feddymem.config import ConfigError, FeatureConfig
from feddymem.data import scan
from feddymem.detect.autoencoder import (
    AutoencoderConfig,
    AutoencoderDetector,
    FeatureAutoencoder,
    mean_reconstruction_error,
    train_autoencoder,
)
from feddymem.detect.base import NotFittedError
from feddymem.detect.registry import load_detector

CFG = AutoencoderConfig(image_size=64, batch_size=8, calibration_fraction=0.2, epochs=20)


def _features(n: int = 24, *, seed: int = 0) -> torch.Tensor:
    """(n, 16, 6, 6) features of rank 4 per position plus noise, not centred or scaled."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(n, 4, 6, 6, generator=gen)
    mix = torch.randn(16, 4, generator=gen)
    feats = torch.einsum("nkhw,dk->ndhw", codes, mix) + 0.05 * torch.randn(
        n, 16, 6, 6, generator=gen
    )
    return 3.0 * feats + 2.0


def _model(seed: int = 0) -> FeatureAutoencoder:
    return FeatureAutoencoder(16, hidden=24, latent=6, seed=seed)


def _param(model: FeatureAutoencoder, name: str) -> torch.Tensor:
    return dict(model.named_parameters())[name]


def _distance(model: FeatureAutoencoder, reference: dict[str, torch.Tensor]) -> float:
    return sum(
        float((p.detach() - reference[k]).square().sum()) for k, p in model.named_parameters()
    )


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: a second thread costs more in synchronisation than it saves (and a lot
    more on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_texture_tree

    return make_texture_tree(tmp_path_factory.mktemp("tex") / "brick", n_train=15)


@pytest.fixture(scope="module")
def fitted(tree: Path) -> AutoencoderDetector:
    return AutoencoderDetector(CFG).fit(scan(tree).train)


def test_shapes_and_seeded_initialisation() -> None:
    rng_before = torch.random.get_rng_state()
    a, b, c = _model(0), _model(0), _model(1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # no global RNG
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(_param(a, "encoder.0.weight"), _param(c, "encoder.0.weight"))
    p = _features(3)
    assert a(p).shape == (3, 16, 6, 6)
    err = a.reconstruction_error(p)
    assert err.shape == (3, 6, 6) and bool((err >= 0).all())
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        a.reconstruction_error(torch.rand(2, 15, 6, 6))
    with pytest.raises(ValueError, match="must be >= 1"):
        FeatureAutoencoder(16, hidden=0, latent=4, seed=0)
    with pytest.raises(ConfigError, match="epochs"):
        AutoencoderConfig(epochs=-1)


def test_training_reduces_the_loss_and_is_seeded() -> None:
    feats = _features()
    model = _model()
    before = train_autoencoder(model, feats, epochs=0, batch_size=8, lr=1e-2, seed=0)
    after = train_autoencoder(model, feats, epochs=40, batch_size=8, lr=1e-2, seed=0)
    assert after < 0.3 * before
    assert after == pytest.approx(mean_reconstruction_error(model, feats, batch_size=8), rel=0.3)
    twin = _model()
    train_autoencoder(twin, feats, epochs=0, batch_size=8, lr=1e-2, seed=0)
    assert train_autoencoder(twin, feats, epochs=40, batch_size=8, lr=1e-2, seed=0) == after
    assert torch.equal(_param(twin, "decoder.2.weight"), _param(model, "decoder.2.weight"))


def test_standardisation_is_set_once_from_training_features() -> None:
    feats = _features()
    model = _model()
    assert not model.is_normalised
    train_autoencoder(model, feats, epochs=1, batch_size=8, lr=1e-3, seed=0)
    assert model.is_normalised and int(model.norm_count) == 24 * 36
    assert torch.allclose(model.feature_mean.flatten(), feats.mean(dim=(0, 2, 3)), atol=1e-5)
    kept = model.feature_mean.clone()
    train_autoencoder(model, feats + 10.0, epochs=1, batch_size=8, lr=1e-3, seed=0)
    assert torch.equal(model.feature_mean, kept)  # a FedAvg round keeps the global statistics


def test_trains_on_features_made_in_inference_mode() -> None:
    with torch.inference_mode():
        feats = _features() * 1.0  # what the frozen extractor hands out
    assert feats.is_inference()
    loss = train_autoencoder(_model(), feats, epochs=2, batch_size=8, lr=1e-3, seed=0)
    assert loss > 0


def test_proximal_term_pulls_weights_toward_the_reference() -> None:
    feats = _features()
    start = _model(0)
    train_autoencoder(start, feats, epochs=0, batch_size=8, lr=1e-2, seed=0)  # statistics
    reference = {k: v.clone() for k, v in _model(1).state_dict().items()}
    plain, prox = copy.deepcopy(start), copy.deepcopy(start)
    kw: dict[str, Any] = {"epochs": 10, "batch_size": 8, "lr": 1e-2, "seed": 0}
    train_autoencoder(plain, feats, **kw)
    train_autoencoder(prox, feats, proximal_mu=10.0, reference=reference, **kw)
    d_start, d_plain, d_prox = (_distance(m, reference) for m in (start, plain, prox))
    assert d_prox < 0.5 * d_start and d_prox < 0.5 * d_plain
    # mu = 0 with a reference is plain training.
    zero = copy.deepcopy(start)
    train_autoencoder(zero, feats, proximal_mu=0.0, reference=reference, **kw)
    assert torch.equal(_param(zero, "encoder.0.weight"), _param(plain, "encoder.0.weight"))


def test_training_refuses_bad_arguments() -> None:
    feats = _features(4)
    with pytest.raises(ValueError, match="needs the reference"):
        train_autoencoder(_model(), feats, epochs=1, batch_size=2, lr=1e-3, seed=0, proximal_mu=1.0)
    partial = dict(list(_model().state_dict().items())[:2])
    with pytest.raises(ValueError, match="reference lacks"):
        train_autoencoder(
            _model(), feats, epochs=1, batch_size=2, lr=1e-3, seed=0, reference=partial
        )
    with pytest.raises(ValueError, match="features must be"):
        train_autoencoder(_model(), feats[:, :8], epochs=1, batch_size=2, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="lr > 0"):
        train_autoencoder(_model(), feats, epochs=1, batch_size=2, lr=0.0, seed=0)


def test_detector_separates_generated_anomalies(fitted: AutoencoderDetector, tree: Path) -> None:
    metrics = fitted.evaluate(scan(tree).test)
    assert metrics.image_auroc >= 0.9
    assert metrics.pixel_auroc is not None and metrics.pixel_auroc >= 0.9
    assert fitted.n_train_ == 12 and fitted.threshold_ is not None
    assert fitted.train_loss_ is not None and fitted.train_loss_ > 0
    with pytest.raises(ValueError, match="fitted at"):
        fitted.score(torch.rand(1, 3, 32, 64))


def test_save_load_round_trip(fitted: AutoencoderDetector, tmp_path: Path) -> None:
    again = load_detector(fitted.save(tmp_path / "ae.pt"))
    assert isinstance(again, AutoencoderDetector)
    assert again.config == fitted.config and again.threshold_ == fitted.threshold_
    assert again.map_floor_ == fitted.map_floor_ is not None
    assert again.train_loss_ == fitted.train_loss_
    again._extractor = fitted.extractor  # same frozen backbone; tracing another costs seconds
    x = torch.rand(2, 3, 64, 64)
    a, b = fitted.score(x), again.score(x)
    assert torch.equal(a.image_scores, b.image_scores)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)


def test_from_model_scores_like_the_fitted_detector(
    fitted: AutoencoderDetector, tree: Path
) -> None:
    assert fitted.model_ is not None
    base = FeatureConfig(image_size=64, batch_size=8)
    det = AutoencoderDetector.from_model(fitted.model_, image_hw=(64, 64), config=base)
    assert det.config.hidden == fitted.model_.hidden and det.config.latent == fitted.model_.latent
    det._extractor = fitted.extractor
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(det.score(x).image_scores, fitted.score(x).image_scores)
    with pytest.raises(NotFittedError, match="threshold"):
        det.predict(x)
    det.calibrate(list(scan(tree).train)[:4], quantile=0.99)
    assert det.predict(x).is_anomalous.shape == (2,)
    # The detector holds a copy: further training of the model does not move its scores.
    with torch.no_grad():
        _param(fitted.model_, "decoder.2.bias").add_(1.0)
    try:
        assert not torch.equal(det.score(x).image_scores, fitted.score(x).image_scores)
    finally:
        with torch.no_grad():
            _param(fitted.model_, "decoder.2.bias").sub_(1.0)
    with pytest.raises(ValueError, match="standardisation"):
        AutoencoderDetector.from_model(_model(), image_hw=(64, 64), config=base)


def test_unfitted_raises(tree: Path) -> None:
    det = AutoencoderDetector(CFG)
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(torch.rand(1, 3, 64, 64))
    with pytest.raises(NotFittedError):
        det.calibrate(scan(tree).train, quantile=0.9)
    with pytest.raises(ValueError, match="normal images only"):
        det.fit(scan(tree).test)
