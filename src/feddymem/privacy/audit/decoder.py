"""The inversion decoder: one feature vector back to the image patch it covers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchDecoder(nn.Module):
    """Inversion decoder: one memory vector (d,) -> the RGB patch (3, P, P) it covers, in [0, 1].

    Inputs are standardised with the attacker's public statistics (`mean`, `std`, (d,)); an MLP
    d -> hidden -> hidden -> 3 P P with GELU, sigmoid output.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, *, in_dim: int, patch_size: int, hidden: int, seed: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 3 * patch_size * patch_size),
        )
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)

    def set_input_stats(self, features: torch.Tensor) -> None:
        """Standardise inputs by the mean and std of `features` (N, d)."""
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(features.std(dim=0).clamp_min(1e-6))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """(M, d) -> (M, 3, P, P)."""
        out = self.net((vectors.float() - self.mean) / self.std)
        return torch.sigmoid(out).view(-1, 3, self.patch_size, self.patch_size)

    @torch.no_grad()
    def decode(self, vectors: torch.Tensor, *, batch: int = 4096) -> torch.Tensor:
        """Batched inference, (M, d) -> (M, 3, P, P)."""
        self.eval()
        return torch.cat([self(vectors[i : i + batch]) for i in range(0, vectors.shape[0], batch)])


def train_decoder(
    decoder: PatchDecoder,
    features: torch.Tensor,
    patches: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Fit `decoder` on (feature (N, d), patch (N, 3 P P) uint8) pairs by MSE; returns the mean
    loss of the last 10 % of steps. AdamW with a one-cycle learning-rate schedule, seeded batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    decoder.train()
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, features.shape[0], (batch_size,), generator=gen)
        target = patches[idx].float().div_(255.0)
        loss = F.mse_loss(decoder(features[idx]).flatten(1), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
    decoder.eval()
    return float(np.mean(tail))
