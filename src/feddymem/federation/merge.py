"""One round's merge on the server: M_g from the accepted uploads, and what to do when it fails.

Validation (`limits.validate_memory` against `limits.UploadLimits`) keeps the magnitudes that
crash or poison faiss's k-means out; this is the second line. Should the aggregation still
raise, or give an M_g that fails `limits.validate_global_memory`, the upload that causes it is
found (first: an upload that fails on its own; else: the one whose removal lets the rest merge),
dropped with the error as its reason, and the merge runs again over the rest. Only a failure no
single upload explains stops the round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from feddymem.federation.limits import UploadLimits, validate_global_memory
from feddymem.federation.participants import FederationError
from feddymem.method.reduce import ReducedMemory

__all__ = ["Aggregate", "merge_uploads"]

log = logging.getLogger(__name__)

Aggregate = Callable[[Sequence[ReducedMemory]], torch.Tensor]
_FAILURES = (ValueError, RuntimeError, ArithmeticError, MemoryError)


def _attempt(
    aggregate: Aggregate, memories: Sequence[ReducedMemory], limits: UploadLimits
) -> torch.Tensor | str:
    """M_g (float32, contiguous) of `memories`, or the error text when it fails."""
    try:
        merged = aggregate(memories).detach().to("cpu", torch.float32).contiguous()
        validate_global_memory(merged, limits)
    except _FAILURES as err:
        return f"{type(err).__name__}: {err}"
    return merged


def _culprit(
    aggregate: Aggregate, uploads: Mapping[str, ReducedMemory], limits: UploadLimits
) -> str | None:
    """The client whose upload makes the merge fail, or None if no single one does."""
    names = sorted(uploads)
    for name in names:
        if isinstance(_attempt(aggregate, [uploads[name]], limits), str):
            return name
    for name in names:
        rest = [uploads[other] for other in names if other != name]
        if rest and not isinstance(_attempt(aggregate, rest, limits), str):
            return name
    return None


def merge_uploads(
    uploads: Mapping[str, ReducedMemory], aggregate: Aggregate, limits: UploadLimits
) -> tuple[torch.Tensor, dict[str, str]]:
    """M_g from `uploads` (merged in client-name order) and the clients dropped on the way
    (name -> reason). Raises FederationError when no upload is left or no single upload
    explains a failure."""
    left = dict(uploads)
    dropped: dict[str, str] = {}
    while left:
        outcome = _attempt(aggregate, [left[name] for name in sorted(left)], limits)
        if not isinstance(outcome, str):
            return outcome, dropped
        culprit = _culprit(aggregate, left, limits)
        if culprit is None:
            raise FederationError(f"aggregation failed and no single upload explains it: {outcome}")
        log.warning("aggregation failed (%s); the upload of %s is the cause", outcome, culprit)
        dropped[culprit] = f"aggregation failed with this upload: {outcome}"
        del left[culprit]
    raise FederationError("aggregation failed for every upload: " + "; ".join(dropped.values()))
