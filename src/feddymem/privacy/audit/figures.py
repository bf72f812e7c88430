"""The audit's figures: grid.png and auroc_vs_psnr.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feddymem.privacy.audit.setting import SettingResult


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.clamp(0, 1).permute(1, 2, 0).numpy()


def save_grid(
    path: Path,
    results: Sequence[SettingResult],
    *,
    whole: Sequence[tuple[str, torch.Tensor]],
) -> None:
    """grid.png: whole images (victim, decodings) on top; per setting a strip of
    (best-matching original | reconstruction) patch pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(results)
    cols = max(1, len(whole))
    fig = plt.figure(figsize=(max(2.2 * cols, 10), 2.6 + 1.5 * len(results)), layout="constrained")
    spec = fig.add_gridspec(rows, cols, height_ratios=[2.2] + [1.0] * len(results))
    for j, (title, image) in enumerate(whole):
        ax = fig.add_subplot(spec[0, j])
        ax.imshow(_to_hwc(image), interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    for i, res in enumerate(results, start=1):
        ax = fig.add_subplot(spec[i, :])
        tiles = []
        gap = torch.ones(3, res.recon.shape[-2], 2)
        for orig, rec in zip(res.matched, res.recon, strict=True):
            tiles += [orig, rec, gap, gap]
        strip = torch.cat(tiles[:-2], dim=2) if tiles else torch.ones(3, 8, 8)
        ax.imshow(_to_hwc(strip), interpolation="nearest")
        a = res.summary["attack"]
        ax.set_title(
            f"({res.group}) {res.name}: original | reconstruction pairs — best-match PSNR "
            f"{a['psnr']:.1f} dB, SSIM {a['ssim']:.2f}, ΔPSNR vs twin upload {a['delta_psnr']:+.2f} dB",
            fontsize=8,
        )
        ax.axis("off")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def save_plot(path: Path, settings: Sequence[dict[str, Any]], baselines: dict[str, Any]) -> None:
    """auroc_vs_psnr.png: image AUROC against the attack's best-match PSNR (left) and against
    the victim-specific gain over the twin upload, delta PSNR with 95 % intervals (right:
    patches filled, whole images hollow where the upload keeps the layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    colours = {"a": "tab:red", "b": "tab:blue", "c": "tab:green"}

    def tag(s: dict[str, Any]) -> str:
        eps = s["guarantee"]["epsilon"]
        return f"({s['group']}) {s['name']}" + (f", ε={eps:.3g}" if isinstance(eps, float) else "")

    for s in settings:
        colour, y = colours.get(s["group"], "k"), s["image_auroc"]
        left.scatter(s["attack"]["psnr"], y, color=colour, s=36)
        left.annotate(
            tag(s), (s["attack"]["psnr"], y), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
        for part, marker, face in ((s["attack"], "o", colour), (s.get("whole_image"), "s", "none")):
            if not part:
                continue
            se = part.get("delta_psnr_se")
            right.errorbar(
                part["delta_psnr"],
                y,
                xerr=None if se is None else 1.96 * se,
                fmt=marker,
                color=colour,
                mfc=face,
                ms=6,
                capsize=3,
                lw=1,
            )
        right.annotate(
            tag(s),
            (s["attack"]["delta_psnr"], y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    for name, style in (("mean_public_patch", ":"), ("public_decoded", "--")):
        left.axvline(baselines[name]["psnr"], color="grey", ls=style, lw=1, label=name)
    left.legend(fontsize=7, loc="upper left")
    left.set_xlabel("best-match PSNR of patch reconstructions vs victim patches (dB)", fontsize=8)
    right.axvline(0.0, color="grey", ls=":", lw=1)
    right.scatter([], [], marker="o", color="k", label="patches (items)")
    right.scatter([], [], marker="s", facecolors="none", edgecolors="k", label="whole images")
    right.legend(fontsize=7, loc="lower right")
    right.set_xlabel("ΔPSNR: victim's upload − a similar site's upload, ±95 % (dB)", fontsize=8)
    for ax in (left, right):
        ax.set_ylabel("image AUROC (victim's test split)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Utility against leakage: each point is one upload setting", fontsize=9)
    fig.savefig(path, dpi=130)
    plt.close(fig)
