"""The results table of a bench run: ``results.csv``, one row per (method, data set, seed).

The runner appends rows as they finish and drops rows about to be re-run; the report reads
them back. Both sides use this module, so neither imports the other.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "RESULTS_FILE", "append_row", "drop_rows", "read_rows", "rerun_command"]

COLUMNS = (
    "method",
    "dataset",
    "clients",
    "seed",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "bytes_up",
    "bytes_down",
    "rounds",
    "wall_s",
    "peak_rss_mb",
)
RESULTS_FILE = "results.csv"


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``results.csv`` (numbers parsed; empty cells None)."""
    path = out / RESULTS_FILE
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key in COLUMNS:
                value = raw.get(key, "")
                if key in ("method", "dataset"):
                    row[key] = value
                elif value == "":
                    row[key] = None
                elif key in ("clients", "seed", "rounds"):
                    row[key] = int(value)
                else:
                    row[key] = float(value)
            rows.append(row)
    return rows


def append_row(out: Path, row: Mapping[str, Any]) -> None:
    path = out / RESULTS_FILE
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})


def drop_rows(out: Path, keys: set[tuple[str, str, int]]) -> None:
    """Remove rows about to be re-run (``--force``), keeping the others."""
    rows = [r for r in read_rows(out) if (r["method"], r["dataset"], r["seed"]) not in keys]
    path = out / RESULTS_FILE
    if path.is_file():
        path.unlink()
    for row in rows:
        append_row(out, row)


def rerun_command(preset: str, out: Path, *, method: str, dataset: str, seed: int) -> str:
    """The command that runs one row again, alone."""
    return (
        f"feddymem bench --preset {preset} --out {out} --datasets {dataset} "
        f"--methods {method} --seeds {seed} --force"
    )
