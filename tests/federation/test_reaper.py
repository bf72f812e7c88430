"""`reaper` ends a process's leftovers only once that process is gone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from feddymem.federation import reaper

REPO = Path(__file__).resolve().parents[2]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_reaper_waits_for_the_parent_then_ends_the_listed_processes() -> None:
    parent = subprocess.Popen(SLEEP)
    left = [subprocess.Popen(SLEEP) for _ in range(2)]
    bystander = subprocess.Popen(SLEEP)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feddymem.federation.reaper",
                str(parent.pid),
                *(str(p.pid) for p in left),
            ],
            env={"PYTHONPATH": str(REPO / "src")},
        )
        time.sleep(1.0)  # the reaper is up and waits: the parent still runs
        assert proc.poll() is None
        assert all(p.poll() is None for p in left)
        parent.terminate()
        parent.wait(timeout=10)
        assert proc.wait(timeout=30) == 0
        assert [p.wait(timeout=5) for p in left] == [-15, -15]  # terminated, not killed
        assert bystander.poll() is None
    finally:
        for p in [parent, *left, bystander]:
            p.kill()
            p.wait()


def test_end_kills_what_ignores_sigterm(monkeypatch) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
        monkeypatch.setattr(reaper, "GRACE_S", 0.5)
        assert reaper.end([psutil.Process(stubborn.pid)]) == 1
        assert stubborn.wait(timeout=5) == -9
    finally:
        stubborn.kill()
        stubborn.wait()


def test_reaper_refuses_arguments_that_are_not_pids() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "feddymem.federation.reaper", "all"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src")},
    )
    assert run.returncode == 2
    assert run.stderr.startswith("usage:") and "Traceback" not in run.stderr
