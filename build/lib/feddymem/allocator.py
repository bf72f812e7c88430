"""The C allocator's settings for this project's processes: keep freed memory for reuse.

PyTorch on the CPU allocates every activation, patch-feature and k-NN score tensor with the C
library's ``malloc`` and frees it when the batch is done, so each batch asks again for the same
few large blocks. glibc's defaults hand blocks above its mmap threshold (128 KiB, rising only to
the size of the largest block freed so far) fresh pages from the kernel and give the top of its
heap back once more than its trim threshold is free, so each batch pays a page fault for every
4 KiB page of memory it had just released; on a virtual machine a page fault is expensive.
On this project's 2-core reference machine that was about half of the backbone's time
(``benchmarks/detector.py --only speed`` prints the process's page faults and system time).

:func:`keep_freed_memory` raises the mmap threshold to glibc's maximum (32 MiB) and the trim
threshold out of reach, so freed blocks stay in the heap and the next batch reuses them, with
no page faults. The process's resident memory then stays at its peak instead of falling back
between batches. This is what PyTorch's CPU performance guides get from preloading jemalloc or
tcmalloc, done with glibc's own ``mallopt`` so it needs no system library and no
``LD_PRELOAD``. The entry points call it: the ``feddymem`` command, the Flower apps (so the
simulation's worker processes and deployed SuperNodes run with it) and the benchmark scripts.
``FEDDYMEM_KEEP_FREED_MEMORY=0`` turns it off; the user's own ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``glibc.malloc`` tunables in the environment
are left to rule instead. Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["keep_freed_memory", "keeping_freed_memory"]

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2); blocks larger than this
# still come straight from the kernel and go back to it when freed.
_MMAP_THRESHOLD = 32 << 20
# Freed memory at the top of the heap is kept up to this much; more is given back.
_TRIM_THRESHOLD = 1 << 30
# Each growth of the heap asks for this much more than needed, so it grows in few steps
# (address space only: pages are touched, and counted as resident, when used).
_TOP_PAD = 256 << 20
_ENV_SWITCH = "FEDDYMEM_KEEP_FREED_MEMORY"
# The user's own settings of the same three, which rule instead (GLIBC_TUNABLES counts when it
# sets any glibc.malloc tunable).
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory in the heap for the next batch (see the
    module's text); once per process, later calls return the first call's answer.

    Returns:
        Whether the settings are in force: False off glibc, when ``FEDDYMEM_KEEP_FREED_MEMORY``
        is ``0``, or when the environment sets glibc's allocator itself.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(_ENV_SWITCH, "1").strip() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        # the C library the process already has loaded (no library search); musl has no mallopt
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD),
    )
    # mallopt returns 1 on success, 0 for a value it refuses; every setting is tried
    accepted = [mallopt(param, value) == 1 for param, value in settings]
    _applied = all(accepted)
    if not _applied:
        log.debug("glibc refused the allocator settings; its defaults stay")
    return _applied


def keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has put its settings in force in this process (a
    report's question: it changes nothing)."""
    return _applied is True
