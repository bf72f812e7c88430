"""The audit report as a Markdown table."""

from __future__ import annotations

from typing import Any


def _pm(se: float | None) -> str:
    return "" if se is None else f" ± {1.96 * se:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of one audit report: per setting the best-match PSNR / SSIM of the
    patch reconstructions, delta PSNR against the twin upload (+- 1.96 standard errors), the
    whole-image best-match PSNR (own upload / twin) where the layout allows, image AUROC and
    epsilon."""
    lines = [
        "| setting | items | patch PSNR (dB) | patch SSIM | ΔPSNR vs twin (dB) "
        "| whole-image PSNR, own / twin ± 95% of Δ (dB) | image AUROC | ε (δ, releases) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report["settings"]:
        g = s["guarantee"]
        if g["formal"]:
            eps = g["epsilon"]
            value = f"{eps:.3g}" if isinstance(eps, float) else str(eps)
            eps_text = f"{value} ({g['delta']:g}, {g['releases']})"
        elif g["clip_norm"] is not None:
            eps_text = "no formal bound"
        else:
            eps_text = "—"
        a = s["attack"]
        whole = s.get("whole_image")
        whole_text = (
            f"{whole['psnr']:.2f} / {whole['twin_psnr']:.2f}{_pm(whole['delta_psnr_se'])}"
            if whole
            else "—"
        )
        lines.append(
            f"| ({s['group']}) {s['name']} | {s['memory_items']} | {a['psnr']:.2f} "
            f"| {a['ssim']:.3f} | {a['delta_psnr']:+.2f}{_pm(a['delta_psnr_se'])} "
            f"| {whole_text} | {s['image_auroc']:.3f} | {eps_text} |"
        )
    b = report["baselines"]
    for key in ("mean_public_patch", "public_decoded"):
        lines.append(
            f"| baseline: {key} | — | {b[key]['psnr']:.2f} | {b[key]['ssim']:.3f} | — | — | — | — |"
        )
    return "\n".join(lines)
