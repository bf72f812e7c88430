"""Reconstruction scores: PSNR, SSIM, best match."""

from __future__ import annotations

import pytest
import torch
from skimage.metrics import structural_similarity
from tests.privacy.audit.conftest import rand

from feddymem.privacy.audit import (
    best_match,
    psnr,
    ssim,
)


def test_identical_patches_score_maximal() -> None:
    a = rand((5, 3, 16, 16), 0)
    assert torch.all(psnr(a, a) == 100.0)
    assert torch.allclose(ssim(a, a), torch.ones(5), atol=1e-5)
    b = (a + 0.1 * rand((5, 3, 16, 16), 1)).clamp(0, 1)
    assert torch.all(psnr(a, b) < 100.0) and torch.all(ssim(a, b) < 1.0)


def test_ssim_matches_scikit_image() -> None:
    a, b = rand((4, 3, 16, 16), 2), rand((4, 3, 16, 16), 3)
    b = 0.6 * a + 0.4 * b
    ours = ssim(a, b)
    for i in range(4):
        ref = structural_similarity(
            a[i].permute(1, 2, 0).numpy(),
            b[i].permute(1, 2, 0).numpy(),
            channel_axis=2,
            data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)


def test_best_match_equals_brute_force_and_finds_exact_copies() -> None:
    truth = (rand((300, 48), 4) * 255).round().to(torch.uint8)
    recon = torch.cat([truth[[17, 250]].float() / 255, rand((6, 48), 5)])
    mse, idx = best_match(recon, truth, chunk=64)
    brute = ((recon[:, None, :] - truth[None].float() / 255) ** 2).mean(dim=2)
    assert torch.equal(idx, brute.argmin(dim=1))
    assert torch.allclose(mse, brute.min(dim=1).values, atol=1e-5)
    assert idx[:2].tolist() == [17, 250] and float(mse[:2].max()) < 1e-6
