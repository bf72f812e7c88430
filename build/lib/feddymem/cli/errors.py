"""User errors of the `feddymem` command: one line `error: ...` naming the file or option,
exit code 2, no traceback unless `--debug`."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A command-line input the command refuses (missing folder, nothing to score, ...)."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one `error: ...` line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input, not a bug: every library error type for a file, an
    option or a spec, `ValueError` (out-of-range values the library refuses) and `OSError`
    (unreadable, unwritable, missing files)."""
    from feddymem.config import ConfigError
    from feddymem.data import DataError
    from feddymem.detect.backbones import BackboneError
    from feddymem.detect.modelfile import ModelFileError
    from feddymem.federation.checkpoint import CheckpointError
    from feddymem.federation.participants import FederationError

    return (
        UsageError,
        DataError,
        ConfigError,
        ModelFileError,
        BackboneError,
        CheckpointError,
        FederationError,
        ValueError,
        OSError,
    )


def one_line(err: BaseException) -> str:
    """The message of `err` on one line, naming the file of an `OSError`."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def report(err: BaseException) -> int:
    """Print `err` as one `error: ...` line on stderr; the exit code it stands for."""
    if isinstance(err, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(err, user_error_types()):
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        f"error: internal error ({type(err).__name__}: {one_line(err)}); "
        "run again with --debug for the traceback",
        file=sys.stderr,
    )
    return EXIT_INTERNAL_ERROR
