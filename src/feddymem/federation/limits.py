"""What an uploaded memory may be: shape, dtype, magnitudes and bytes, fixed by the spec.

Nothing here is learnt from the uploads themselves (no vote among clients): the vector length d
follows from the model config and the backbone's taps, the norm bound from the backbone's
feature range (`BackboneSpec.feature_abs_max`), the weight bound from the number of feature
cells an image can have. The server checks every upload against these limits
(`wire.memory_from_content` for bytes before decoding, `wire.validate_memory` for the numbers)
and writes them into the run's resolved settings (results.json ``settings.upload_limits``).

Rules (C_max = max_memory_items, D = feature channels of the taps, d = D // gamma_d or D):
- ``dim`` = d; ``dtype`` = the config's wire dtype (float32 or float16); ``max_items`` = C_max.
- ``max_norm`` = NORM_HEADROOM * feature_abs_max * sqrt(D): a p(x) vector cannot exceed
  feature_abs_max * sqrt(D); the headroom leaves G_k room to grow during training. With
  differential privacy the released vector is clipped to C and noised by sigma*C per coordinate:
  the bound is at least C * (1 + sigma * (sqrt(d) + 10)).
- ``max_weight`` = max_images * cells, cells = ASPECT_CAP * ceil(image_size / stride)^2 (an item
  absorbs at most every patch of every image); ``max_images`` bounds n_k.
- ``max_bytes`` = (max_items * (d + 1)) * 4 bytes + BYTES_SLACK: the memory's arrays as sent,
  checked on the raw bytes before numpy decodes them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from feddymem.config import FedDyMemConfig
from feddymem.detect.backbones import get_backbone

__all__ = [
    "ASPECT_CAP",
    "BYTES_SLACK",
    "MAX_IMAGES",
    "NORM_HEADROOM",
    "UploadLimits",
    "expected_dim",
    "upload_limits",
]

NORM_HEADROOM = 10.0
ASPECT_CAP = 16
MAX_IMAGES = 10_000_000
BYTES_SLACK = 64 * 1024  # numpy headers and record framing


@dataclass(frozen=True)
class UploadLimits:
    """The bounds every uploaded memory must meet (see the module docstring for the rules)."""

    dim: int
    dtype: str  # the vectors' wire dtype (FedDyMemConfig.wire_dtype); weights are float32
    max_items: int
    max_norm: float
    max_weight: float
    max_images: int
    max_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _taps(config: FedDyMemConfig) -> tuple[int, int, float]:
    """(D, finest stride, feature_abs_max) of the config's backbone taps, without building it."""
    spec = get_backbone(config.backbone)
    layers = tuple(config.layers) if config.layers else spec.default_layers
    unknown = [layer for layer in layers if layer not in spec.taps]
    if unknown:
        raise ValueError(f"{config.backbone} has no tap(s) {unknown}; taps: {sorted(spec.taps)}")
    channels = sum(spec.taps[layer].channels for layer in layers)
    stride = min(spec.taps[layer].stride for layer in layers)
    return channels, stride, spec.feature_abs_max


def expected_dim(config: FedDyMemConfig) -> int:
    """d, the length of every memory vector a client of `config` uploads."""
    channels, _, _ = _taps(config)
    return channels // config.gamma_d if config.generator else channels


def upload_limits(config: FedDyMemConfig, *, max_items: int) -> UploadLimits:
    """The limits for uploads of clients running `config` (max_items from the spec)."""
    channels, stride, abs_max = _taps(config)
    dim = channels // config.gamma_d if config.generator else channels
    max_norm = NORM_HEADROOM * abs_max * math.sqrt(channels)
    if config.dp_clip_norm is not None:
        sigma = config.dp_noise_multiplier
        max_norm = max(max_norm, config.dp_clip_norm * (1.0 + sigma * (math.sqrt(dim) + 10.0)))
    cells = ASPECT_CAP * math.ceil(config.image_size / stride) ** 2
    return UploadLimits(
        dim=dim,
        dtype=config.wire_dtype,
        max_items=max_items,
        max_norm=float(max_norm),
        max_weight=float(MAX_IMAGES * cells),
        max_images=MAX_IMAGES,
        max_bytes=int(max_items * (dim + 1) * 4 + BYTES_SLACK),
    )
