"""The comparison table and its plots, made from ``results.csv`` (and ``scores/``) alone.

``table.md``: image AUROC per method (rows, grouped by family) and data set (columns) as
mean ± std over seeds, then pixel AUROC / AUPRO where masks exist, then bytes per client per
training round, wall time and peak memory; a footnote gives the command that re-runs one row.
``plots/auroc_bars.png`` per data set, ``plots/roc_<dataset>.png`` (seed 0, ROC averaged over
the clients), ``plots/auroc_vs_bytes.png``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feddymem.bench.methods import METHODS
from feddymem.bench.results import read_rows, rerun_command

__all__ = ["summarise", "write_report"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (method, dataset)


def summarise(rows: Sequence[dict[str, Any]], column: str) -> dict[Key, tuple[float, float, int]]:
    """(method, dataset) -> (mean, std, number of seeds) of `column`, over rows that have it."""
    groups: dict[Key, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(column) is not None:
            groups[(row["method"], row["dataset"])].append(float(row[column]))
    return {
        key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
        for key, v in groups.items()
    }


def _order(methods: set[str]) -> list[str]:
    known = [m for m in METHODS if m in methods]
    return known + sorted(methods - set(known))


def _cell(stats: dict[Key, tuple[float, float, int]], key: Key, *, scale: float = 1.0) -> str:
    if key not in stats:
        return "–"
    mean, std, n = stats[key]
    if n == 1:
        return f"{mean * scale:.3f}"
    return f"{mean * scale:.3f} ± {std * scale:.3f}"


def _bytes(value: float) -> str:
    if value <= 0:
        return "0"
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def _table(rows: Sequence[dict[str, Any]], column: str, datasets: list[str]) -> list[str]:
    stats = summarise(rows, column)
    methods = _order({r["method"] for r in rows})
    lines = [
        "| method | family | " + " | ".join(datasets) + " | mean |",
        "|---|---|" + "---|" * len(datasets) + "---|",
    ]
    for method in methods:
        family = METHODS[method].family if method in METHODS else ""
        cells = [_cell(stats, (method, d)) for d in datasets]
        means = [stats[(method, d)][0] for d in datasets if (method, d) in stats]
        overall = f"{np.mean(means):.3f}" if len(means) == len(datasets) else "–"
        lines.append(f"| {method} | {family} | " + " | ".join(cells) + f" | {overall} |")
    return lines


def _cost_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    methods = _order({r["method"] for r in rows})
    lines = [
        "| method | bytes up / client / round | bytes down / client / round | rounds "
        "| wall s (mean) | peak RSS MB (max) |",
        "|---|---|---|---|---|---|",
    ]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        up = float(np.mean([r["bytes_up"] or 0 for r in mine]))
        down = float(np.mean([r["bytes_down"] or 0 for r in mine]))
        rounds = max(r["rounds"] or 0 for r in mine)
        wall = float(np.mean([r["wall_s"] or 0 for r in mine]))
        peak = max(r["peak_rss_mb"] or 0 for r in mine)
        lines.append(
            f"| {method} | {_bytes(up)} | {_bytes(down)} | {rounds} | {wall:.0f} | {peak:.0f} |"
        )
    return lines


def write_markdown(out: Path, rows: Sequence[dict[str, Any]], *, preset: str) -> Path:
    """``table.md`` from the rows."""
    datasets = sorted({r["dataset"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    text = [
        f"# Comparison: preset `{preset}`, seeds {seeds}",
        "",
        "Image AUROC, mean ± std over seeds of the mean over each data set's clients "
        "(each client scored on its own test split).",
        "",
        *_table(rows, "image_auroc", datasets),
    ]
    pix = [r for r in rows if r["pixel_auroc"] is not None]
    if pix:
        pix_sets = sorted({r["dataset"] for r in pix})
        text += [
            "",
            "Pixel AUROC (data sets with masks):",
            "",
            *_table(pix, "pixel_auroc", pix_sets),
        ]
        text += ["", "AUPRO (FPR ≤ 0.3):", "", *_table(pix, "aupro", pix_sets)]
    text += [
        "",
        "Cost: bytes per client per training round (measured on the wire; centralised rows: "
        "the training images a site would ship once), wall time per row, peak memory of the "
        "whole process tree:",
        "",
        *_cost_table(rows),
        "",
        "Re-run one row alone: `"
        + rerun_command(preset, out, method="METHOD", dataset="DATASET", seed=0).replace(
            "--seeds 0", "--seeds SEED"
        )
        + "`",
        "",
    ]
    path = out / "table.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path


def _plot_bars(out: Path, rows: Sequence[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarise(rows, "image_auroc")
    datasets = sorted({r["dataset"] for r in rows})
    methods = _order({r["method"] for r in rows})
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(4.5 * len(datasets), 4.5), squeeze=False, sharey=True
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        present = [m for m in methods if (m, dataset) in stats]
        means = [stats[(m, dataset)][0] for m in present]
        stds = [stats[(m, dataset)][1] for m in present]
        colors = ["C3" if m == "feddymem" else "C0" for m in present]
        ax.barh(range(len(present)), means, xerr=stds, color=colors)
        ax.set_yticks(range(len(present)), present, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0.4, 1.0)
        ax.set_title(dataset)
        ax.set_xlabel("image AUROC")
    fig.tight_layout()
    path = out / "plots" / "auroc_bars.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_roc(arrays: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """ROC averaged over clients (vertical averaging on a common FPR grid)."""
    from sklearn.metrics import roc_curve

    grid = np.linspace(0.0, 1.0, 101)
    tprs = []
    names = {k.rsplit("__", 1)[0] for k in arrays.files}
    for name in sorted(names):
        labels, scores = arrays[f"{name}__labels"], arrays[f"{name}__scores"]
        if labels.min() == labels.max():
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        tprs.append(np.interp(grid, fpr, tpr))
    if not tprs:
        return None
    return grid, np.mean(tprs, axis=0)


def _plot_rocs(out: Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        folder = out / "scores" / dataset
        if not folder.is_dir():
            continue
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for method in _order({p.name for p in folder.iterdir() if p.is_dir()}):
            files = sorted((folder / method).glob("seed*.npz"))
            if not files:
                continue
            with np.load(files[0]) as arrays:
                curve = _mean_roc(arrays)
            if curve is not None:
                ax.plot(*curve, label=method, lw=2.2 if method == "feddymem" else 1.0)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (mean over clients)")
        ax.set_title(f"{dataset}: ROC, first seed")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / "plots" / f"roc_{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_bytes(out: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """AUROC against bytes per client per round (up + down), one panel per data set, one
    colour per family (float32 / float16 memories of FedDyMem are separate rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fed = [r for r in rows if r["bytes_up"] and r["method"] in METHODS]
    fed = [r for r in fed if METHODS[r["method"]].federated]
    if not fed:
        return None
    datasets = sorted({r["dataset"] for r in fed})
    families = sorted({METHODS[r["method"]].family for r in fed})
    colours = {f: f"C{i}" for i, f in enumerate(families)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        mine = [r for r in fed if r["dataset"] == dataset]
        for method in _order({r["method"] for r in mine}):
            these = [r for r in mine if r["method"] == method]
            x = np.mean([r["bytes_up"] + r["bytes_down"] for r in these])
            y = np.mean([r["image_auroc"] for r in these])
            family = METHODS[method].family
            ax.scatter([x], [y], s=40, color=colours[family])
            ax.annotate(method, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(dataset)
        ax.set_xlabel("bytes per client per round (up + down)")
    axes[0][0].set_ylabel("image AUROC (mean over seeds)")
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=c, label=f) for f, c in colours.items()
    ]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "plots" / "auroc_vs_bytes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, *, preset: str) -> Path | None:
    """``table.md`` and the plots from what ``out`` holds; None when it holds no row yet."""
    rows = read_rows(out)
    if not rows:
        log.warning("no finished row in %s: no table", out)
        return None
    (out / "plots").mkdir(exist_ok=True)
    table = write_markdown(out, rows, preset=preset)
    _plot_bars(out, rows)
    _plot_rocs(out, rows)
    _plot_bytes(out, rows)
    log.info("table: %s", table)
    return table
