"""Log output of the ServerApp / ClientApp processes Flower starts.

Those processes configure only Flower's own logger; without a handler our INFO lines (rounds,
dropped clients) would be lost. Flower mirrors a ServerApp's stderr to ``flwr log`` and a
ClientApp's to its SuperNode's output, so a plain stderr handler is what operators see.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["ensure_app_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ensure_app_logging(level: int = logging.INFO) -> None:
    """Give the ``feddymem`` logger a stderr handler unless logging is configured already."""
    package = logging.getLogger("feddymem")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    package.addHandler(handler)
    package.setLevel(level)
