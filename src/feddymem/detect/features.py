"""Patch features p(x): frozen backbone taps, 3x3 local aggregation, upsampled and concatenated."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from feddymem.detect.backbones import BackboneError, get_backbone

log = logging.getLogger(__name__)


class PatchFeatureExtractor(nn.Module):
    """p(x) in R^{B x D x H x W} from a frozen pretrained backbone (PatchCore / CFA style).

    Each tapped stage is averaged over a 3x3 neighbourhood (stride 1), upsampled bilinearly to
    the grid of the finest tap and concatenated along channels. `out_channels` (D) and `stride`
    are known at construction, before any forward pass. Inputs are RGB in [0, 1], (B, 3, H, W);
    the backbone's own normalisation is applied inside.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: tuple[str, ...] | None = None,
        weights: Path | None = None,
        optimize: bool = True,
    ) -> None:
        super().__init__()
        spec = get_backbone(backbone)
        self.layers = tuple(layers) if layers else spec.default_layers
        unknown = [layer for layer in self.layers if layer not in spec.taps]
        if unknown:
            raise BackboneError(f"{backbone} has no tap(s) {unknown}; taps: {sorted(spec.taps)}")
        self.backbone_name = backbone
        self.tap_channels = tuple(spec.taps[layer].channels for layer in self.layers)
        self.out_channels = sum(self.tap_channels)
        self.stride = min(spec.taps[layer].stride for layer in self.layers)
        # the coarsest tap's stride: how far a tile border's padding reaches (tiling's overlap)
        self.coarse_stride = max(spec.taps[layer].stride for layer in self.layers)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.net = spec.build(self.layers, weights)
        self.net.eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.pool = nn.AvgPool2d(kernel_size=3, stride=1, padding=1, count_include_pad=False)
        self.optimize = optimize
        self._fast: torch.jit.ScriptModule | None = None

    def matches(self, backbone: str, layers: tuple[str, ...] | None) -> bool:
        """Whether this extractor is the one a config naming `backbone` / `layers` would build
        (`layers` None: the backbone's default taps), so it can be shared instead."""
        if backbone != self.backbone_name:
            return False
        wanted = tuple(layers) if layers else get_backbone(backbone).default_layers
        return wanted == self.layers

    def _network(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen backbone's taps; by default through a frozen TorchScript graph.

        `torch.jit.optimize_for_inference` folds batch norm into the convolutions and runs them
        on oneDNN (`benchmarks/detector.py --only speed` prints its rate next to eager mode's).
        Any failure to trace falls back to eager mode, once, with a warning.
        """
        if not self.optimize:
            return self.net(x)
        if self._fast is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(self.net, x[:1], strict=False, check_trace=False)
                    self._fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            except Exception as err:  # tracing is an optimisation, never a requirement
                log.warning("backbone tracing failed (%s); running it eagerly", err)
                self.optimize = False
                return self.net(x)
        return self._fast(x)

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the feature grid for an input of `image_hw` pixels (multiples of 32)."""
        return image_hw[0] // self.stride, image_hw[1] // self.stride

    def train(self, mode: bool = True) -> PatchFeatureExtractor:
        super().train(mode)
        self.net.eval()  # the backbone is frozen: batch-norm statistics never move
        return self

    @torch.inference_mode()
    def taps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H_in, W_in) in [0, 1] -> the backbone's tapped stages, before aggregation:
        the backbone's normalisation, then the (optimised) network."""
        return self._network((images - self.mean) / self.std)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H_in, W_in) in [0, 1] -> p(x), (B, D, H_in / stride, W_in / stride).

        p(x) is laid out channels-last (``memory_format=torch.channels_last``): the pooling and
        upsampling take PyTorch's channels-last kernels, and the (B * H * W, D) patch vectors
        that the memory bank and the k-NN take are then a view, not a copy.
        """
        taps = self.taps(images)
        grid = self.grid_size((images.shape[-2], images.shape[-1]))
        maps = []
        for layer in self.layers:
            feat = self.pool(taps[layer].contiguous(memory_format=torch.channels_last))
            if feat.shape[-2:] != grid:
                feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
            maps.append(feat)
        return torch.cat(maps, dim=1)


def patch_vectors(z: torch.Tensor) -> torch.Tensor:
    """Feature maps (B, D, H, W) -> one row per patch, (B * H * W, D), image by image and row
    by row (the order every memory and k-NN search here assumes)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
