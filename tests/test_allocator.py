"""feddymem.allocator: freed memory is reused instead of faulted in again, and the switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A child process: the allocator setting (or not), then (unless told "switch-only") the default
# backbone's patch features for one batch, five times over, as scoring runs batch after batch;
# it prints the setting's answer and the minor page faults of the five passes.
_CHILD = """
import json, resource, sys
import torch
from feddymem.allocator import keep_freed_memory, keeping_freed_memory
before_call = keeping_freed_memory()
applied = keep_freed_memory()
if sys.argv[1:] == ["switch-only"]:
    print(json.dumps({"applied": applied}))
    raise SystemExit
torch.set_num_threads(2)
from feddymem.detect.features import PatchFeatureExtractor
net = PatchFeatureExtractor(backbone="efficientnet_lite0")
x = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
net(x), net(x)  # warm-up: tracing, first touch of the heap
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    net(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"before": before_call, "applied": applied, "again": keep_freed_memory(),
                  "now": keeping_freed_memory(), "faults": faults}))
"""


def _child(*args: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    clean.pop("FEDDYMEM_KEEP_FREED_MEMORY", None)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    kept = _child()
    default = _child(FEDDYMEM_KEEP_FREED_MEMORY="0")
    assert kept["before"] is False and kept["applied"] is True
    assert kept["again"] is True and kept["now"] is True
    assert default["applied"] is False and default["now"] is False
    if default["faults"] < 10_000:
        pytest.skip(f"this allocator reuses freed memory by itself ({default['faults']} faults)")
    # by default the activations come back from the kernel at every pass (about 24,000 pages
    # a pass on the reference machine); kept, the heap's pages are reused
    assert kept["faults"] * 10 < default["faults"]


def test_the_environment_rules_over_it() -> None:
    assert _child("switch-only", MALLOC_TRIM_THRESHOLD_="131072")["applied"] is False
    assert (
        _child("switch-only", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")["applied"]
        is False
    )
    assert _child("switch-only", FEDDYMEM_KEEP_FREED_MEMORY="off")["applied"] is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_tunables_of_other_parts_of_glibc_do_not_stop_it() -> None:
    assert _child("switch-only", GLIBC_TUNABLES="glibc.pthread.rseq=0")["applied"] is True
