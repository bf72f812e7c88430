"""The `feddymem` command: it parses arguments and calls the library, one module per
subcommand group (`detector`: fit / evaluate / predict, `data`, `federate`: federate / demo,
`bench`, `audit`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from feddymem.cli import audit, bench, data, detector, federate
from feddymem.cli.errors import OneLineParser, report

__all__ = ["build_parser", "main"]

_GROUPS = (detector, data, federate, bench, audit)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="feddymem",
        description="Federated, unsupervised image anomaly detection (FedDyMem on Flower).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user error is one `error: ...` line and exit code 2 (the
    traceback only with `--debug`)."""
    # file names that are not UTF-8 are printed with escapes instead of failing
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from feddymem.allocator import keep_freed_memory

    keep_freed_memory()  # every command's tensors come and go by the batch
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as err:
        if args.debug:
            raise
        return report(err)
