"""`feddymem data`: write data sets in MVTec layout (ELPV, synthetic anomalies, mixtures)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any


def _print_summary(summary: Any) -> None:
    """A data set's summary (a dataclass) as indented JSON on stdout."""
    print(json.dumps(dataclasses.asdict(summary), indent=2, default=str))


def cmd_data_elpv(args: argparse.Namespace) -> int:
    from feddymem.data import export_elpv

    summary = export_elpv(
        args.out, cell_type=args.type, seed=args.seed, test_fraction=args.test_fraction
    )
    _print_summary(summary)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from feddymem.data import scan
    from feddymem.data.generated.synth.dataset import synthesize_dataset

    normals_dir: Path = args.normals
    train: list[Path] = []
    if (normals_dir / "train" / "good").is_dir():
        split = scan(normals_dir)
        normals = [s.path for s in split.test if s.label == 0]
        train = [s.path for s in split.train]
    else:
        from feddymem.data.layouts import IMAGE_EXTENSIONS

        normals = sorted(p for p in normals_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    summary = synthesize_dataset(
        normals,
        args.out,
        seed=args.seed,
        kinds=tuple(args.kinds),
        n_good=args.n_good,
        train=train,
    )
    _print_summary(summary)
    return 0


def register(sub: Any) -> None:
    """Add data to the `feddymem` subcommands."""
    p = sub.add_parser("data", help="write data sets in MVTec layout")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser(
        "elpv",
        help="export the ELPV solar-cell set (elpv-dataset package)",
        description="train/good: defect probability 0; test/good: a held-out share of them; "
        "test/defect: probability 1; uncertain/: 1/3 and 2/3.",
    )
    q.add_argument("--out", type=Path, required=True, help="folder to write")
    q.add_argument(
        "--type",
        default="mono",
        choices=["mono", "poly", "all"],
        help="cell type (default: %(default)s)",
    )
    q.add_argument(
        "--seed", type=int, default=0, help="seed of the held-out split (default: %(default)s)"
    )
    q.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="share of good cells held out (default: %(default)s)",
    )
    q.set_defaults(func=cmd_data_elpv)
    q = dsub.add_parser(
        "synth",
        help="insert synthetic anomalies with exact masks into real normal images",
        description="From a folder of normal images (or an MVTec root: its test/good images get anomalies, "
        "its train/good is copied), write an MVTec-layout test set with masks.",
    )
    q.add_argument(
        "--normals",
        type=Path,
        required=True,
        help="folder of normal images or an MVTec-layout root",
    )
    q.add_argument("--out", type=Path, required=True, help="folder to write")
    q.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    q.add_argument(
        "--kinds",
        nargs="+",
        default=["cutpaste", "perlin", "scratch", "blob"],
        help="anomaly kinds (default: all)",
    )
    q.add_argument(
        "--n-good",
        type=int,
        default=None,
        help="normal images kept unaltered in test/good (default: half)",
    )
    q.set_defaults(func=cmd_data_synth)
    from feddymem.data.generated.mixtures.cli import register_cli as register_mixture_cli

    register_mixture_cli(dsub)
