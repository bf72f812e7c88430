"""Reconstruction scores: PSNR, SSIM, best match among the victim's patches or images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of pairs (M, ...) in [0, 1], per pair (M,); identical pairs give 100 dB."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7) -> torch.Tensor:
    """SSIM of pairs (M, C, P, P) in [0, 1], per pair (M,), as scikit-image's default.

    Uniform win_size x win_size window, sample covariances, K1 = 0.01, K2 = 0.03, data range 1,
    averaged over the valid window positions and the channels.
    """
    x, y = a.float(), b.float()
    c = x.shape[1]
    pool = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    ux, uy = pool(x), pool(y)
    uxx, uyy, uxy = pool(x * x), pool(y * y), pool(x * y)
    n = win_size * win_size
    cov = n / (n - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(s.shape[0], c, -1).mean(dim=2).mean(dim=1)


def best_match(
    recon: torch.Tensor, truth: torch.Tensor, *, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each reconstruction (M, K) in [0, 1], the truth row (N, K) (uint8 or [0, 1]) with the
    smallest squared error: returns (mse (M,), index (M,)). Chunked matrix products."""
    r = recon.float().flatten(1)
    scale = 1.0 / 255.0 if truth.dtype == torch.uint8 else 1.0
    r2 = r.pow(2).sum(dim=1, keepdim=True)
    best = torch.full((r.shape[0],), math.inf)
    arg = torch.zeros(r.shape[0], dtype=torch.long)
    for start in range(0, truth.shape[0], chunk):
        t = truth[start : start + chunk].float() * scale
        d = r2 + t.pow(2).sum(dim=1) - 2.0 * (r @ t.T)
        m, a = d.min(dim=1)
        better = m < best
        best = torch.where(better, m, best)
        arg = torch.where(better, a + start, arg)
    return best.clamp_min(0.0) / r.shape[1], arg


@dataclass(frozen=True)
class MatchScores:
    """Best-match scores of reconstructions (M, 3, P, P): per item `psnr`, `ssim` (M,) and the
    matched truth patches `matched` (M, 3, P, P) float in [0, 1]."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    matched: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {
            "psnr": float(self.psnr.mean()),
            "psnr_median": float(self.psnr.median()),
            "ssim": float(self.ssim.mean()),
        }


def score_reconstructions(recon: torch.Tensor, truth: torch.Tensor) -> MatchScores:
    """PSNR of each reconstruction's best match among `truth` (N, 3 P P) uint8, and its SSIM."""
    mse, idx = best_match(recon, truth)
    matched = (truth[idx].float() / 255.0).view_as(recon)
    return MatchScores(
        psnr=10.0 * torch.log10(1.0 / mse.clamp_min(1e-10)),
        ssim=ssim(recon, matched),
        matched=matched,
    )


def image_match(
    recon: torch.Tensor, twin: torch.Tensor, images: torch.Tensor
) -> dict[str, float | None]:
    """Whole-image reconstructions (K, 3, H_in, W_in) of the upload and of its twin against the
    victim's images (N, 3, H_in, W_in): mean PSNR / SSIM of each one's best-matching image."""
    out: dict[str, float | None] = {"images": float(recon.shape[0])}
    flat = images.flatten(1)
    per_image: list[torch.Tensor] = []
    for key, rec in (("", recon), ("twin_", twin)):
        mse, idx = best_match(rec.flatten(1), flat, chunk=64)
        p = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
        per_image.append(p)
        out[f"{key}psnr"] = float(p.mean())
        out[f"{key}ssim"] = float(ssim(rec, images[idx]).mean())
    out["delta_psnr_se"] = _delta_se(per_image[0], per_image[1])
    out["delta_psnr"] = float(per_image[0].mean() - per_image[1].mean())
    return out


def _delta_se(own: torch.Tensor, twin: torch.Tensor) -> float | None:
    """Standard error of mean(own) - mean(twin): paired by index when the counts match (an
    arbitrary pairing only makes it the unpaired value), else the two independent means'."""
    n, m = own.numel(), twin.numel()
    if n == m and n >= 2:
        return float((own - twin).std()) / math.sqrt(n)
    if n >= 2 and m >= 2:
        return math.sqrt(float(own.var()) / n + float(twin.var()) / m)
    return None


def attack_summary(victim: MatchScores, twin: MatchScores | None) -> dict[str, Any]:
    v = victim.summary()
    if twin is None:
        return v
    t = twin.summary()
    return {
        **v,
        "twin_psnr": t["psnr"],
        "twin_ssim": t["ssim"],
        "delta_psnr": v["psnr"] - t["psnr"],
        "delta_psnr_se": _delta_se(victim.psnr, twin.psnr),
        "delta_ssim": v["ssim"] - t["ssim"],
    }


def identification(
    recon: torch.Tensor, truth: torch.Tensor, pool: torch.Tensor, *, neighbours: int = 9
) -> dict[str, float]:
    """Does each whole-image reconstruction pick out its own image among its neighbours?

    `recon` (K, 3, H, W) are reconstructions of the images `truth` (K, 3, H, W); `pool`
    (N, 3, H, W) holds other images of the kind (the victim's others and held-out ones; copies
    of a truth image are ignored). For image k the candidates are image k and its `neighbours`
    nearest pool images (pixel MSE); the reconstruction identifies it when image k is the
    candidate nearest to it. Chance is 1 / (neighbours + 1). Also PSNR / SSIM against the true
    image (not the best match).
    """
    t, p, r = truth.flatten(1).float(), pool.flatten(1).float(), recon.flatten(1).float()
    d_tp = torch.cdist(t, p).pow(2)
    d_tp[d_tp <= 1e-12] = float("inf")  # the truth image itself, if the pool holds it
    near = d_tp.topk(neighbours, dim=1, largest=False).indices  # (K, neighbours)
    cand = torch.cat([t.unsqueeze(1), p[near]], dim=1)  # (K, 1 + neighbours, F)
    d_rc = (cand - r.unsqueeze(1)).pow(2).mean(dim=2)
    hit = d_rc.argmin(dim=1) == 0
    return {
        "identification": float(hit.float().mean()),
        "chance": 1.0 / (neighbours + 1),
        "psnr_true": float(psnr(recon, truth).mean()),
        "ssim_true": float(ssim(recon, truth).mean()),
        "images": float(recon.shape[0]),
    }
