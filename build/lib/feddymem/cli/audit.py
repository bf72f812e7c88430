"""`feddymem audit`: what an upload gives away."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_audit(args: argparse.Namespace) -> int:
    """Privacy audit: inversion attack on what a client sends, and the cost of noise."""
    from feddymem.privacy.audit import run_audit

    summary = run_audit(args.config, args.out)
    print(
        json.dumps(summary, indent=2, default=str) if args.json else f"wrote {args.out}/audit.json"
    )
    return 0


def register(sub: Any) -> None:
    """Add audit to the `feddymem` subcommands."""
    p = sub.add_parser(
        "audit",
        help="privacy audit: rebuild images from what a client sends; AUROC cost of noise",
        description=(
            "Train an inversion decoder on public images, apply it to a raw patch bank, the "
            "reduced memory and the noised memory, score reconstructions (PSNR / SSIM against "
            "the best-matching true patch) and each setting's image AUROC. Writes audit.json, "
            "grid.png and auroc_vs_psnr.png to --out. See docs/privacy.md."
        ),
    )
    p.add_argument(
        "--config", type=Path, required=True, help="audit config TOML, e.g. configs/audit_elpv.toml"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_audit)
