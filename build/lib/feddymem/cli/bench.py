"""`feddymem bench`: the comparison table of baselines, FedDyMem and its ablations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _named_spec(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC.toml, got {text!r}")
    return name, Path(path)


def cmd_bench(args: argparse.Namespace) -> int:
    """The comparison table: every method on every data set of a preset, over its seeds."""
    from feddymem.bench import run_bench
    from feddymem.bench.report import write_report

    if args.report_only:
        table = write_report(args.out.resolve(), preset=args.preset)
        if table is None:
            print(f"error: {args.out} holds no results.csv rows", file=sys.stderr)
            return 2
        print(table.read_text(encoding="utf-8"))
        return 0
    run_bench(
        args.preset,
        args.out,
        datasets=args.datasets,
        methods=args.methods,
        seeds=None if args.seeds is None else [int(s) for s in args.seeds],
        specs=dict(args.spec or []),
        shared_data=args.shared_data,
        force=args.force,
        keep_work=args.keep_work,
    )
    table = args.out.resolve() / "table.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8"))
    failures = args.out.resolve() / "failures.jsonl"
    if failures.is_file() and failures.stat().st_size:
        print(f"some rows failed: see {failures}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    """Add bench to the `feddymem` subcommands."""
    p = sub.add_parser(
        "bench",
        help="the comparison table: baselines, FedDyMem and its ablations on mixed data sets",
        description=(
            "Run every (method, data set, seed) of a preset; write results.csv (one row each, "
            "resumable), table.md (mean ± std over seeds) and plots/ to --out. The mixtures are "
            "built into --out/data on first use."
        ),
    )
    p.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="quick: a small smoke run (< 20 min on 2 cores); full: the README's table "
        "(default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--datasets", type=_csv_list, help="comma-separated subset of the preset's data sets"
    )
    p.add_argument("--methods", type=_csv_list, help="comma-separated subset of the methods")
    p.add_argument("--seeds", type=_csv_list, help="comma-separated seeds (default: the preset's)")
    p.add_argument(
        "--spec",
        type=_named_spec,
        action="append",
        metavar="NAME=SPEC.toml",
        help="add your own data set: a federation spec whose clients point at MVTec-layout "
        "roots (MVTec AD, VisA, MPDD, BTAD, ...); repeatable",
    )
    p.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="folder with the real surface sets magnetic_tile and kolektorsdd (default: "
        "../shared/data next to the repository, if present)",
    )
    p.add_argument("--force", action="store_true", help="run rows again that results.csv has")
    p.add_argument(
        "--keep-work", action="store_true", help="keep each row's client states and models"
    )
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild table.md and plots from --out"
    )
    p.set_defaults(func=cmd_bench)
