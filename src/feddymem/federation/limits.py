"""What an uploaded memory may be: shape, dtype, magnitudes and bytes, fixed by the spec.

Nothing here is learnt from the uploads themselves (no vote among clients): the vector length d
follows from the model config and the backbone's taps, the norm bound from the backbone's
feature range (`BackboneSpec.feature_abs_max`), the weight bound from the number of feature
cells an image can have. The server checks every upload against these limits
(`wire.memory_from_content` for bytes before decoding, `validate_memory` for the numbers)
and writes them into the run's resolved settings (results.json ``settings.upload_limits``).

Rules (C_max = max_memory_items, D = feature channels of the taps, d = D // gamma_d or D):
- ``dim`` = d; ``dtype`` = the config's wire dtype (float32, float16, sq8, sq4 or pq, with
  ``pq_subdim`` and ``pq_bits``); ``max_items`` = C_max.
- ``max_norm`` = NORM_HEADROOM * feature_abs_max * sqrt(D): a p(x) vector cannot exceed
  feature_abs_max * sqrt(D); the headroom leaves G_k room to grow during training. With
  differential privacy the released vector is clipped to C and noised by sigma*C per coordinate:
  the bound is at least C * (1 + sigma * (sqrt(d) + 10)).
- ``max_weight`` = max_images * cells, cells = ASPECT_CAP * ceil(image_size / stride)^2 (an item
  absorbs at most every patch of every image); ``max_images`` bounds n_k.
- ``max_bytes`` = (max_items * (d + 1)) * 4 bytes + BYTES_SLACK: the memory's arrays as sent,
  checked on the raw bytes before numpy decodes them. For pq: max_items codes and weights and
  one codebook (compress.encoded_bytes) + BYTES_SLACK; for sq8 / sq4 the codes, weights
  and ranges (compress.sq_bytes) + BYTES_SLACK.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from feddymem.config import FedDyMemConfig
from feddymem.detect.backbones import get_backbone
from feddymem.federation import compress
from feddymem.federation.wire import MemoryRejected, WireFormat
from feddymem.method.reduce import ReducedMemory

__all__ = [
    "ASPECT_CAP",
    "BYTES_SLACK",
    "MAX_IMAGES",
    "NORM_HEADROOM",
    "UploadLimits",
    "expected_dim",
    "upload_limits",
    "validate_global_memory",
    "validate_memory",
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
    pq_subdim: int = 4  # with dtype "pq": values per sub-vector and bits per code
    pq_bits: int = 6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def wire(self) -> WireFormat:
        """The format uploads must travel in."""
        return WireFormat(self.dtype, self.pq_subdim, self.pq_bits)


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
    max_bytes = max_items * (dim + 1) * 4
    if config.wire_dtype == "pq":
        sub, bits = config.wire_pq_subdim, config.wire_pq_bits
        max_bytes = max_items * 4 + compress.encoded_bytes(max_items, dim, subdim=sub, bits=bits)
    elif config.wire_dtype in compress.SQ_BITS:
        bits = compress.SQ_BITS[config.wire_dtype]
        max_bytes = max_items * 4 + compress.sq_bytes(max_items, dim, bits=bits)
    return UploadLimits(
        dim=dim,
        dtype=config.wire_dtype,
        pq_subdim=config.wire_pq_subdim,
        pq_bits=config.wire_pq_bits,
        max_items=max_items,
        max_norm=float(max_norm),
        max_weight=float(MAX_IMAGES * cells),
        max_images=MAX_IMAGES,
        max_bytes=int(max_bytes + BYTES_SLACK),
    )


# ----------------------------------------------------------------------------------------------
# validation


def validate_memory(memory: ReducedMemory, limits: UploadLimits) -> None:
    """Check an uploaded memory against the spec's `limits` before it may enter the k-means.

    M_k must be (C_k, d) float32 with 1 <= C_k <= max_items and d == limits.dim, every item
    finite with L2 norm <= max_norm; its weights (C_k,) float32, finite, in (0, max_weight];
    1 <= n_k <= max_images. Raises MemoryRejected naming the first failed check: the upload is
    refused whole.
    """
    _check_shapes(memory, limits)
    vectors, weights = memory.vectors, memory.weights
    items = int(vectors.shape[0])
    if not bool(torch.isfinite(vectors).all()):
        bad = int((~torch.isfinite(vectors)).any(dim=1).sum())
        raise MemoryRejected(f"vectors hold NaN or Inf ({bad} of {items} items)")
    norms = torch.linalg.vector_norm(vectors.double(), dim=1)
    if bool((norms > limits.max_norm).any()):
        raise MemoryRejected(
            f"{int((norms > limits.max_norm).sum())} of {items} items have L2 norm above the "
            f"bound {limits.max_norm:.4g} (largest {float(norms.max()):.4g})"
        )
    if not bool(torch.isfinite(weights).all()):
        raise MemoryRejected("weights hold NaN or Inf")
    if not bool((weights > 0).all()):
        raise MemoryRejected("weights must be > 0")
    if bool((weights > limits.max_weight).any()):
        raise MemoryRejected(
            f"a weight of {float(weights.max()):.4g} exceeds the bound {limits.max_weight:.4g}"
        )
    n_images = memory.n_images
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise MemoryRejected(f"n_images must be an integer >= 1, got {n_images!r}")
    if n_images > limits.max_images:
        raise MemoryRejected(f"n_images {n_images} exceeds the bound {limits.max_images}")


def _check_shapes(memory: ReducedMemory, limits: UploadLimits) -> None:
    vectors, weights = memory.vectors, memory.weights
    if not isinstance(vectors, torch.Tensor) or not isinstance(weights, torch.Tensor):
        raise MemoryRejected("vectors and weights must be tensors")
    if vectors.ndim != 2:
        raise MemoryRejected(f"vectors must be 2-D (C, d), got shape {tuple(vectors.shape)}")
    items, width = vectors.shape
    if vectors.dtype != torch.float32:
        raise MemoryRejected(f"vectors dtype must be float32, got {vectors.dtype}")
    if items < 1:
        raise MemoryRejected("memory is empty (0 items)")
    if items > limits.max_items:
        raise MemoryRejected(f"too many items: {items} > max_memory_items {limits.max_items}")
    if width != limits.dim:
        raise MemoryRejected(f"vector length d = {width}, expected {limits.dim}")
    if weights.ndim != 1:
        raise MemoryRejected(f"weights must be 1-D (C,), got shape {tuple(weights.shape)}")
    if weights.dtype != torch.float32:
        raise MemoryRejected(f"weights dtype must be float32, got {weights.dtype}")
    if weights.shape[0] != items:
        raise MemoryRejected(f"weight count {weights.shape[0]} != item count {items}")


def validate_global_memory(global_memory: torch.Tensor, limits: UploadLimits) -> None:
    """Check M_g before it is checkpointed or sent: (C, d) float32, 1 <= C, every centre finite
    and within the upload norm bound (a centre is a weighted mean of accepted items, so an
    honest aggregation always passes). Raises MemoryRejected."""
    if global_memory.ndim != 2 or global_memory.dtype != torch.float32:
        raise MemoryRejected(
            f"M_g must be 2-D float32, got {global_memory.dtype} {tuple(global_memory.shape)}"
        )
    if global_memory.shape[0] < 1 or global_memory.shape[1] != limits.dim:
        raise MemoryRejected(f"M_g has shape {tuple(global_memory.shape)}, d must be {limits.dim}")
    if not bool(torch.isfinite(global_memory).all()):
        raise MemoryRejected("M_g holds NaN or Inf")
    largest = float(torch.linalg.vector_norm(global_memory.double(), dim=1).max())
    if largest > limits.max_norm:
        raise MemoryRejected(f"M_g has a centre of norm {largest:.4g} > {limits.max_norm:.4g}")
