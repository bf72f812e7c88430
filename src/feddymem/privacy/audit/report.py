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


def _eps(g: dict[str, Any]) -> str:
    if g["formal"]:
        eps = g["epsilon"]
        value = f"{eps:.3g}" if isinstance(eps, float) else str(eps)
        out = f"{value} ({g['delta']:g}, {g['releases']})"
        if "tpr_bound_at_1%" in g:  # what the bound promises against any attack
            out += f": TPR@1% <= {100 * g['tpr_bound_at_1%']:.1f}, AUC <= {g['auc_bound']:.3f}"
        return out
    if g["clip_norm"] is not None or g.get("sensitivity") is not None:
        return "no formal bound"
    return "—"


def _mia_cells(result: dict[str, Any]) -> str:
    cells = []
    for attack in ("distance", "calibrated"):
        r = result.get(attack)
        cells.append(
            "— | — | —"
            if r is None
            else f"{r['auc']:.3f} | {100 * r['tpr_at_0.1%']:.1f} | {100 * r['tpr_at_1%']:.1f}"
        )
    return " | ".join(cells)


def format_membership_table(report: dict[str, Any]) -> str:
    """Markdown table of the membership-inference results: per setting and released memory
    (the last upload M_k, the server's M_g after the first and the last round) the AUC and the
    TPR (%) at 0.1 % and 1 % FPR of both attacks, the setting's image AUROC and epsilon; the
    raw bank of public images (knows nothing of the victim) last."""
    lines = [
        "| setting | released | items | distance AUC | TPR@0.1% | TPR@1% "
        "| calibrated AUC | TPR@0.1% | TPR@1% | image AUROC | ε (δ, releases) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["settings"]:
        for name, result in (s.get("membership") or {}).items():
            lines.append(
                f"| ({s['group']}) {s['name']} | {name} | {result['items']} | "
                f"{_mia_cells(result)} | {s['image_auroc']:.3f} | {_eps(s['guarantee'])} |"
            )
    for fed in report.get("fed_padim") or []:
        for name, result in (fed.get("membership") or {}).items():
            lines.append(
                f"| {fed['name']} (positions) | {name} | {result['items']} | "
                f"{_mia_cells(result)} | {fed['image_auroc']:.3f} | — |"
            )
    base = report["baselines"].get("membership_public_raw_bank")
    if base is not None:
        lines.append(
            f"| baseline: raw bank of public images | — | {base['items']} | {_mia_cells(base)} "
            "| — | — |"
        )
    return "\n".join(lines)


def format_identification_table(report: dict[str, Any]) -> str:
    """Markdown table of whole-image reconstruction: identification accuracy (does the
    reconstruction pick out its own image among its nearest images?) beside PSNR / SSIM against
    the true image, for every setting that keeps the image layout and the know-nothing
    baselines."""
    lines = [
        "| reconstruction | images | identification (chance) | PSNR vs true (dB) | SSIM vs true |",
        "|---|---|---|---|---|",
    ]
    rows = [
        (f"({s['group']}) {s['name']}", (s.get("whole_image") or {}).get("identify"))
        for s in report["settings"]
    ]
    b = report["baselines"]
    rows += [
        ("baseline: mean public image", b.get("whole_image_mean_public")),
        ("baseline: random public image", b.get("whole_image_random_public")),
    ]
    for name, r in rows:
        if r is None:
            continue
        lines.append(
            f"| {name} | {r['images']:.0f} | {r['identification']:.2f} ({r['chance']:.2f}) "
            f"| {r['psnr_true']:.2f} | {r['ssim_true']:.3f} |"
        )
    return "\n".join(lines)


def worst_attack(result: dict[str, Any]) -> tuple[float, float]:
    """The strongest attack on one release: (AUC, TPR at 1 % FPR), each the max over attacks."""
    attacks = [result[a] for a in ("distance", "calibrated") if a in result]
    return max(a["auc"] for a in attacks), max(a["tpr_at_1%"] for a in attacks)


def format_defence_table(report: dict[str, Any], *, reference: str = "coreset_4096") -> str:
    """Markdown table, one row per setting: image AUROC and its change against `reference`
    (FedDyMem's default), and the strongest membership attack over both attacks and every
    release (AUC, TPR at 1 % FPR) with epsilon: what each option buys and costs."""
    by_name = {s["name"]: s for s in report["settings"]}
    ref = by_name.get(reference, {}).get("image_auroc")
    lines = [
        f"| setting | image AUROC | Δ vs {reference} (points) | worst MI AUC | worst TPR@1% "
        "| ε (δ, releases) |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["settings"]:
        mia = s.get("membership") or {}
        if not mia:
            continue
        worst = [worst_attack(r) for r in mia.values()]
        delta = "—" if ref is None else f"{100 * (s['image_auroc'] - ref):+.1f}"
        lines.append(
            f"| ({s['group']}) {s['name']} | {s['image_auroc']:.3f} | {delta} "
            f"| {max(w[0] for w in worst):.3f} | {100 * max(w[1] for w in worst):.1f} "
            f"| {_eps(s['guarantee'])} |"
        )
    for fed in report.get("fed_padim") or []:
        if not fed.get("membership"):
            continue
        worst = [worst_attack(r) for r in fed["membership"].values()]
        delta = "—" if ref is None else f"{100 * (fed['image_auroc'] - ref):+.1f}"
        lines.append(
            f"| {fed['name']} statistics | {fed['image_auroc']:.3f} | {delta} "
            f"| {max(w[0] for w in worst):.3f} | {100 * max(w[1] for w in worst):.1f} | — |"
        )
    return "\n".join(lines)
