"""`feddymem federate` keeps Ray to loopback and ends every Ray process, also when killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fakes import smoke_federation
from processes import ProcessGroup, descendants

REPO = Path(__file__).resolve().parents[2]


def _listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets the given processes listen on (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)
    ]


def _ray_processes(marker: str) -> set[int]:
    """Live processes whose command line names this run's Ray folder."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in argv:
            found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_federate_binds_loopback_only_and_sigterm_ends_every_ray_process(
    tmp_path: Path,
) -> None:
    spec = smoke_federation(tmp_path / "fed")
    ray_root = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO),
        "RAY_TMPDIR": ray_root,
    }
    group = ProcessGroup(tmp_path)
    try:
        federate = group.start(
            "federate",
            [
                sys.executable,
                "-m",
                "feddymem.cli",
                "federate",
                "--config",
                str(spec),
                "--out",
                str(tmp_path / "out"),
            ],
            env=env,
        )
        addresses: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and federate.poll() is None:
            tree = descendants([federate.pid]) | {federate.pid}
            addresses = _listening(tree)
            # GCS, raylet and at least one worker up: the run is under way
            if len(addresses) >= 4 and (tmp_path / "out" / "checkpoints").is_dir():
                break
            time.sleep(1.0)
        assert federate.poll() is None, group.logs()
        assert len(addresses) >= 4, (addresses, group.logs())
        outward = [
            a for a in addresses if not a.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")
        ]
        assert outward == [], addresses
        ray_pids = _ray_processes(ray_root)
        assert ray_pids, "no Ray process names the Ray folder"

        federate.send_signal(signal.SIGTERM)
        federate.wait(timeout=60)
        assert federate.returncode == 128 + signal.SIGTERM, group.logs()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _ray_processes(ray_root):
            time.sleep(0.5)
        assert _ray_processes(ray_root) == set(), group.logs()
    finally:
        group.stop_all()
        shutil.rmtree(ray_root, ignore_errors=True)
