"""The metric loss: CFA's soft-boundary hypersphere loss against the memory a client holds."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MetricLoss:
    """L = (L_att + L_rep) / nu over patch vectors z_j and memory M (method.md's symbols).

    With D_j the ascending squared distances of z_j to the memory:
    L_att = mean_j sum_{i<=K} max(0, D_j^(i) - r^2)
    L_rep = mean_j sum_{K<i<=K+J} max(0, r^2 - D_j^(i) - alpha)
    """

    k: int = 3
    j: int = 3
    radius: float = 1e-5
    margin: float = 0.1
    nu: float = 1e-3

    def __call__(
        self, z: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """z (N, d) patch vectors, memory (C, d) -> scalar loss and its two parts."""
        if z.ndim != 2 or memory.ndim != 2 or z.shape[1] != memory.shape[1]:
            raise ValueError(
                f"shapes do not match: z {tuple(z.shape)}, memory {tuple(memory.shape)}"
            )
        k = min(self.k, memory.shape[0])
        j = min(self.j, memory.shape[0] - k)
        sq = torch.cdist(z, memory).pow(2)
        nearest = torch.topk(sq, k + j, dim=1, largest=False).values
        r2 = self.radius**2
        att = torch.clamp(nearest[:, :k] - r2, min=0).sum(dim=1).mean()
        if j > 0:
            rep = torch.clamp(r2 - nearest[:, k : k + j] - self.margin, min=0).sum(dim=1).mean()
        else:
            rep = torch.zeros((), dtype=z.dtype)
        loss = (att + rep) / self.nu
        return loss, {"loss_att": float(att.detach()), "loss_rep": float(rep.detach())}
