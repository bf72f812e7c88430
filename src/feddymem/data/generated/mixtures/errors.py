"""The error of a mixture that cannot be built."""

from __future__ import annotations

from feddymem.data.images import DataError


class MixtureError(DataError):
    """A mixture cannot be built: unknown name, missing inputs, pools too small, bad target."""
