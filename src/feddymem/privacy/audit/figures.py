"""The audit's figures: grid.png, auroc_vs_psnr.png and auroc_vs_membership.png."""

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


def save_membership_plot(
    path: Path,
    settings: Sequence[dict[str, Any]],
    *,
    baselines: dict[str, Any],
    fed_padim: Sequence[dict[str, Any]] | None = None,
    reference: str = "coreset_4096",
    target_auc: float = 0.55,
    target_cost: float = 0.02,
) -> None:
    """auroc_vs_membership.png: image AUROC against the strongest membership attack (worst AUC
    over both attacks and every release), one point per setting; a formal setting's point is
    joined to its AUC bound (no attack can reach right of it); the public raw bank (which knows
    nothing) as the measure's floor; the target (AUC <= `target_auc`, at most `target_cost`
    below `reference`'s image AUROC) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feddymem.privacy.audit.report import worst_attack

    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    colours = {"a": "tab:red", "b": "tab:blue", "c": "tab:green", "d": "tab:purple"}
    rows = [(s, colours.get(s["group"], "k")) for s in settings if s.get("membership")]
    rows += [(f, "tab:grey") for f in fed_padim or [] if f.get("membership")]
    ref = next((s["image_auroc"] for s in settings if s["name"] == reference), None)
    if ref is not None:
        ax.fill_between(
            [0.4, target_auc], ref - target_cost, 1.0, color="tab:green", alpha=0.12,
            label=f"target: worst AUC <= {target_auc}, <= {100 * target_cost:.0f} points "
            f"below {reference}",
        )  # fmt: skip
    floor = baselines.get("membership_public_raw_bank")
    if floor:
        ax.axvline(worst_attack(floor)[0], color="grey", ls="--", lw=1,
                   label="a raw bank of public images (knows nothing)")  # fmt: skip
    left = 0.4
    # settings on (nearly) one spot share one label, their names stacked
    names: dict[tuple[float, float], list[str]] = {}
    for s, colour in rows:
        x = max(worst_attack(r)[0] for r in s["membership"].values())
        y = s["image_auroc"]
        left = min(left, x - 0.02)
        ax.scatter(x, y, color=colour, s=36, zorder=3)
        bound = (s.get("guarantee") or {}).get("auc_bound")
        if bound is not None:
            ax.plot([x, bound], [y, y], color=colour, lw=1, ls=":")
            ax.scatter(bound, y, marker="|", color=colour, s=120)
        spot = next((k for k in names if abs(k[0] - x) < 0.015 and abs(k[1] - y) < 0.004), (x, y))
        names.setdefault(spot, []).append(s["name"])
    for (x, y), group in names.items():
        ax.annotate("\n".join(group), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.scatter([], [], marker="|", color="k", s=120, label="AUC bound of a formal (ε, δ)")
    ax.set_xlim(left, 1.02)
    ax.set_xlabel("strongest membership attack: worst AUC over attacks and releases", fontsize=8)
    ax.set_ylabel("image AUROC (victim's test split)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.set_title(
        "What each upload setting costs and gives away (one point per setting)", fontsize=9
    )
    fig.savefig(path, dpi=130)
    plt.close(fig)
