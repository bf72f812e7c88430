"""``feddymem data mixture``: list the recipes or build one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from feddymem.data.generated.mixtures.build import SUMMARY_NAME, build_mixture
from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import SCALES
from feddymem.data.generated.mixtures.registry import MIXTURES, SHARED_DATA_ENV
from feddymem.data.generated.protocols import Protocol, ProtocolError


def register_cli(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``mixture`` to the ``feddymem data`` sub-commands.

    ``feddymem data mixture NAME --out DIR [--scale quick|full] [--seed S]
    [--shared-data DIR] [--elpv-cache DIR]`` builds one; ``feddymem data mixture --list``
    lists the recipes.  Errors raise :class:`MixtureError` (a ``DataError``).

    Args:
        subparsers: The sub-parsers of ``feddymem data``.

    Returns:
        The new parser (its ``func`` default is :func:`cmd_data_mixture`).
    """
    parser = subparsers.add_parser(
        "mixture",
        help="write a multi-source mixture (clients x sources, MVTec layout) and its spec",
        description="Write <out>/<name>/<client>/<source>/ MVTec-layout trees, "
        "<out>/<name>/federation.toml and mixture.json. Known: " + ", ".join(MIXTURES) + ".",
    )
    parser.add_argument("name", nargs="?", help="mixture name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the mixtures and exit")
    parser.add_argument("--out", type=Path, default=None, help="parent folder of the mixture")
    parser.add_argument(
        "--scale", choices=list(SCALES), default="quick", help="sizes (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help=f"folder with magnetic_tile/ and kolektorsdd/ (default: ${SHARED_DATA_ENV} or "
        "../shared/data)",
    )
    parser.add_argument(
        "--elpv-cache",
        type=Path,
        default=None,
        help="folder for the ELPV exports (default: <out>/_sources)",
    )
    parser.add_argument(
        "--protocol",
        choices=["standard", "few-normals", "new-variant"],
        default="standard",
        help="standard; few-normals: each client keeps only --k training normals (test sets "
        "unchanged); new-variant: each client trains on one source, its test split also holds "
        "a source only other clients trained on (default: %(default)s)",
    )
    parser.add_argument(
        "--k", type=int, default=None, help="training normals per client for few-normals"
    )
    parser.set_defaults(func=cmd_data_mixture)
    return parser


def cmd_data_mixture(args: argparse.Namespace) -> int:
    """Run ``feddymem data mixture``: list the recipes, or build one and print its summary."""
    if args.list:
        rows = [
            {
                "name": r.name,
                "description": r.description,
                "sources": list(r.sources),
                "clients": len(r.clients),
                "pixel_masks": r.pixel_masks,
                "needs_shared_data": r.needs_shared_data,
            }
            for r in MIXTURES.values()
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if args.name is None or args.out is None:
        raise MixtureError(
            "give a mixture name and --out DIR, or --list; known mixtures: "
            + ", ".join(sorted(MIXTURES))
        )
    try:
        protocol = Protocol(args.protocol, args.k)
    except ProtocolError as err:
        raise MixtureError(f"--protocol/--k: {err}") from None
    spec = build_mixture(
        args.name,
        args.out,
        scale=args.scale,
        seed=args.seed,
        shared_data=args.shared_data,
        elpv_cache=args.elpv_cache,
        protocol=protocol,
    )
    summary = json.loads((spec.parent / SUMMARY_NAME).read_text(encoding="utf-8"))
    sys.stdout.write(
        json.dumps({"spec": str(spec), "totals": summary["totals"], "files": summary["files"]})
        + "\n"
    )
    return 0
