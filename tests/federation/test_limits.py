"""The upload limits: what they follow from, and every upload check against them."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from tests.federation.test_wire import LIMITS, make_memory

from feddymem.config import FedDyMemConfig
from feddymem.federation import wire
from feddymem.federation.limits import expected_dim, upload_limits, validate_memory
from feddymem.method.reduce import ReducedMemory


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: ReducedMemory(m.vectors[None], m.weights, m.n_images), "2-D"),
        (lambda m: ReducedMemory(m.vectors[:, :4], m.weights, m.n_images), "expected 5"),
        (lambda m: ReducedMemory(m.vectors.double(), m.weights, m.n_images), "float32"),
        (lambda m: ReducedMemory(m.vectors.half(), m.weights, m.n_images), "float32"),
        (
            lambda m: ReducedMemory(_set(m.vectors, (2, 1), math.nan), m.weights, m.n_images),
            "NaN or Inf",
        ),
        (
            lambda m: ReducedMemory(_set(m.vectors, (0, 0), math.inf), m.weights, m.n_images),
            "NaN or Inf",
        ),
        (lambda m: ReducedMemory(m.vectors, _set(m.weights, (1,), 0.0), m.n_images), "> 0"),
        (lambda m: ReducedMemory(m.vectors, _set(m.weights, (1,), -2.0), m.n_images), "> 0"),
        (lambda m: ReducedMemory(m.vectors, _set(m.weights, (1,), math.nan), m.n_images), "NaN"),
        (lambda m: ReducedMemory(m.vectors, m.weights[:-1], m.n_images), "weight count"),
        (lambda m: ReducedMemory(m.vectors, m.weights[:, None], m.n_images), "1-D"),
        (lambda m: ReducedMemory(m.vectors, m.weights.double(), m.n_images), "float32"),
        (lambda m: ReducedMemory(m.vectors, m.weights, 0), "n_images"),
        (lambda m: ReducedMemory(m.vectors[:0], m.weights[:0], m.n_images), "empty"),
        (
            lambda m: ReducedMemory(m.vectors.repeat(3, 1), m.weights.repeat(3), m.n_images),
            "too many",
        ),
    ],
)
def test_validate_memory_rejects_with_a_reason(
    mutate: Callable[[ReducedMemory], ReducedMemory], match: str
) -> None:
    with pytest.raises(wire.MemoryRejected, match=match):
        validate_memory(mutate(make_memory()), LIMITS)


def _set(t: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    out = t.clone()
    out[index] = value
    return out


def test_the_vector_length_comes_from_the_limits_never_from_the_uploads() -> None:
    """A short vector is refused in round 0 too: no vote among uploads decides d."""
    for width in (1, 4, 6):
        with pytest.raises(wire.MemoryRejected, match="vector length"):
            validate_memory(make_memory(dim=width), LIMITS)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: ReducedMemory(torch.full_like(m.vectors, 1e30), m.weights, 3), "L2 norm"),
        (lambda m: ReducedMemory(_set(m.vectors, (0, 0), 1e19), m.weights, 3), "L2 norm"),
        (
            lambda m: ReducedMemory(_set(m.vectors, (0, 0), 1e19), _set(m.weights, (0,), 3e38), 3),
            "L2 norm",
        ),
        (lambda m: ReducedMemory(m.vectors, _set(m.weights, (0,), 3e38), 3), "weight of"),
        (lambda m: ReducedMemory(m.vectors, m.weights, 10**9), "n_images"),
        (lambda m: ReducedMemory(torch.full_like(m.vectors, 3e38), m.weights, 3), "L2 norm"),
    ],
)
def test_extreme_magnitudes_are_rejected_whole(
    mutate: Callable[[ReducedMemory], ReducedMemory], match: str
) -> None:
    with pytest.raises(wire.MemoryRejected, match=match):
        validate_memory(mutate(make_memory()), LIMITS)


def test_the_limits_follow_the_spec_and_the_backbone() -> None:
    config = FedDyMemConfig(image_size=64)
    limits = upload_limits(config, max_items=50)
    assert limits.dim == expected_dim(config) == 40 + 112  # Lite0 stage2 + stage4 channels
    assert limits.max_items == 50
    assert limits.max_bytes >= 50 * (limits.dim + 1) * 4
    halved = upload_limits(FedDyMemConfig(image_size=64, gamma_d=2), max_items=50)
    assert halved.dim == 76
    assert halved.max_norm == limits.max_norm  # bound from p(x), the generator's input
    private = upload_limits(
        FedDyMemConfig(image_size=64, dp_clip_norm=1e5, dp_noise_multiplier=1.0), max_items=50
    )
    assert private.max_norm > 1e5 * math.sqrt(limits.dim)


def test_real_features_stay_inside_the_norm_bound() -> None:
    """The bound is derived from the backbone's feature range: Lite0 patch features of noise,
    flat and saturated images stay well inside it (and inside feature_abs_max)."""
    from feddymem.detect.backbones import get_backbone
    from feddymem.detect.features import PatchFeatureExtractor

    config = FedDyMemConfig(image_size=64)
    limits = upload_limits(config, max_items=10)
    extractor = PatchFeatureExtractor(backbone=config.backbone, optimize=False)
    images = torch.cat(
        [
            torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
            torch.zeros(1, 3, 64, 64),
            torch.ones(1, 3, 64, 64),
        ]
    )
    with torch.no_grad():
        feats = extractor(images)
    assert float(feats.abs().max()) < get_backbone(config.backbone).feature_abs_max
    norms = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).norm(dim=1)
    assert float(norms.max()) * 10 < limits.max_norm
