"""Anomaly maps: the per-axis matrix form equals upsampling followed by the Gaussian blur."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feddymem.detect.anomaly_map import axis_operator, gaussian_blur, to_anomaly_maps


def direct_maps(scores: torch.Tensor, image_hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """The definition: full-resolution bilinear upsampling, then the 2-D separable blur."""
    up = F.interpolate(scores.unsqueeze(1), size=image_hw, mode="bilinear", align_corners=False)
    return gaussian_blur(up, sigma).squeeze(1)


@pytest.mark.parametrize(
    ("grid", "image_hw", "sigma"),
    [
        ((28, 28), (224, 224), 4.0),
        ((80, 32), (640, 256), 4.0),
        ((7, 5), (56, 40), 0.0),
        ((3, 4), (24, 32), 8.0),
    ],
)
def test_matrix_form_equals_upsample_then_blur(
    grid: tuple[int, int], image_hw: tuple[int, int], sigma: float
) -> None:
    scores = torch.rand(3, *grid, generator=torch.Generator().manual_seed(0)) * 5.0
    scores[1, grid[0] // 2, grid[1] // 2] = 40.0  # one sharp peak
    got = to_anomaly_maps(scores, image_hw=image_hw, sigma=sigma)
    assert got.shape == (3, *image_hw)
    torch.testing.assert_close(got, direct_maps(scores, image_hw, sigma), atol=1e-4, rtol=1e-5)


def test_axis_operator_rows_are_weights() -> None:
    op = axis_operator(28, 224, 4.0)
    assert op.shape == (224, 28)
    assert bool((op >= 0).all())
    torch.testing.assert_close(op.sum(dim=1), torch.ones(224))  # constants stay constant
