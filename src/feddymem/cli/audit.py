"""`feddymem audit`: what an upload gives away."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_audit(args: argparse.Namespace) -> int:
    """Privacy audit: inversion attack on what a client sends, and the cost of noise."""
    from feddymem.privacy.audit import format_defence_table, run_audit

    summary = run_audit(args.config, args.out)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    # each setting's cost and the strongest membership attack on it, with its bound if any
    print(format_defence_table(summary))
    print(f"wrote {args.out}/audit.json")
    return 0


def register(sub: Any) -> None:
    """Add audit to the `feddymem` subcommands."""
    p = sub.add_parser(
        "audit",
        help="privacy audit: membership inference and reconstruction on what a site sends",
        description=(
            "Run each setting's upload through a one-site federation and attack what it sends "
            "and gets back: membership inference (distance and calibrated attacks, AUC and TPR "
            "at low FPR) and an inversion decoder (patch and whole-image reconstructions), "
            "beside each setting's image AUROC and its (epsilon, delta) where it has one. "
            "Prints the defence table; writes audit.json, grid.png and auroc_vs_psnr.png to "
            "--out. See docs/privacy.md."
        ),
    )
    p.add_argument(
        "--config", type=Path, required=True, help="audit config TOML, e.g. configs/audit_elpv.toml"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_audit)
