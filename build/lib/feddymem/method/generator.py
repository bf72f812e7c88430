"""The memory generator G_k: a 1x1 CoordConv patch descriptor (CFA's), z(x) = G_k(p(x))."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from feddymem.detect.knn import NearestNeighbors
from feddymem.method.losses import MetricLoss


def coordinate_channels(batch: int, height: int, width: int, *, like: torch.Tensor) -> torch.Tensor:
    """Two channels of normalised (y, x) coordinates in [-1, 1], (B, 2, H, W)."""
    ys = torch.linspace(-1.0, 1.0, height, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=like.dtype, device=like.device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


class MemoryGenerator(nn.Module):
    """G_k: (B, D, H, W) -> (B, d, H, W), d = D // gamma_d, a 1x1 conv over [p(x), y, x].

    init='identity' starts G_k as z = p(x) (first d channels, coordinate weights zero), so an
    untrained generator scores exactly like a PatchCore memory on the same features and training
    can only refine it; init='random' is CFA's default initialisation (seeded).
    """

    def __init__(
        self, *, in_channels: int, gamma_d: int = 1, init: str = "identity", seed: int = 0
    ) -> None:
        super().__init__()
        if in_channels < 1 or gamma_d < 1 or in_channels // gamma_d < 1:
            raise ValueError(f"bad generator size: in_channels={in_channels}, gamma_d={gamma_d}")
        self.in_channels = in_channels
        self.out_channels = in_channels // gamma_d
        self.conv = nn.Conv2d(in_channels + 2, self.out_channels, kernel_size=1)
        self.reset_parameters(init=init, seed=seed)

    @torch.no_grad()
    def reset_parameters(self, *, init: str, seed: int) -> None:
        assert self.conv.bias is not None
        if init == "identity":
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            eye = torch.eye(self.out_channels, self.in_channels)
            self.conv.weight[:, : self.in_channels, 0, 0] = eye
        elif init == "random":
            gen = torch.Generator().manual_seed(seed)
            bound = 1.0 / (self.in_channels + 2) ** 0.5
            self.conv.weight.uniform_(-bound, bound, generator=gen)
            self.conv.bias.uniform_(-bound, bound, generator=gen)
        else:
            raise ValueError(f"unknown generator init {init!r}; known: 'identity', 'random'")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        coords = coordinate_channels(b, h, w, like=features)
        return self.conv(torch.cat([features, coords], dim=1))


def train_generator(
    generator: nn.Module,
    features: torch.Tensor,
    memory: torch.Tensor,
    loss: MetricLoss,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    extra: Callable[[], torch.Tensor] | None = None,
    extra_weight: float = 0.0,
) -> dict[str, float]:
    """Train G on cached patch features p(x) (N, D, H, W) against a fixed memory (M, d).

    `epochs` passes over the images in a seeded random order, `batch_size` images a step, each
    step minimising the metric loss of G(p(x)) against `memory` (one k-NN index serves every
    step: the memory does not change). `extra` (FedProx's proximal term, say) is added to every
    step's loss with weight `extra_weight`. Returns the means over steps of the total loss
    (``loss``) and its attraction and repulsion parts (``loss_att``, ``loss_rep``), plus the
    unweighted extra term (``loss_extra``) when there is one.
    """
    index = NearestNeighbors(memory.detach())
    order_gen = torch.Generator().manual_seed(seed)
    generator.train()
    sums = {"loss": 0.0, "loss_att": 0.0, "loss_rep": 0.0, "loss_extra": 0.0}
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=order_gen)
        for start in range(0, features.shape[0], batch_size):
            z = generator(features[order[start : start + batch_size]].float())
            z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            total, parts = loss(z, memory, index=index)
            if extra is not None:
                term = extra()
                total = total + extra_weight * term
                sums["loss_extra"] += float(term.detach())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            sums["loss"] += float(total.detach())
            sums["loss_att"] += parts["loss_att"]
            sums["loss_rep"] += parts["loss_rep"]
            steps += 1
    generator.eval()
    if extra is None:
        del sums["loss_extra"]
    return {k: v / max(steps, 1) for k, v in sums.items()}
