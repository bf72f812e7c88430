"""Start Flower's processes for a test and stop every one of them, by process id.

SuperLink and SuperNode start helpers of their own (``flower-superexec``, which starts
``flwr-serverapp`` / ``flwr-clientapp``), detached into their own sessions and told their
parent's pid with ``--parent-pid``. `ProcessGroup.stop_all` therefore takes a snapshot of
everything descending from the processes it started (by parent pid, and by ``--parent-pid``),
terminates the started ones, then the snapshot's survivors, each by its pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something listens on 127.0.0.1:`port` (or `process` died, or time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process {process.pid} exited with {process.returncode} before listening"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process we can read in /proc."""
    out: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return out


def descendants(roots: Sequence[int]) -> set[int]:
    """Every live process under `roots`: children by parent pid, and detached helpers that name
    one of them with ``--parent-pid``."""
    table = _processes()
    found = set(roots) & set(table)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, argv) in table.items():
            if pid in found:
                continue
            named = any(
                a == "--parent-pid"
                and i + 1 < len(argv)
                and argv[i + 1].isdigit()
                and int(argv[i + 1]) in found
                for i, a in enumerate(argv)
            )
            if ppid in found or named:
                found.add(pid)
                changed = True
    return found - set(roots)


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path


class ProcessGroup:
    """The processes one test started; `stop_all` in a finally block."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Started] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        log_file = self.log_dir / f"{name}.log"
        with log_file.open("wb") as sink:
            process = subprocess.Popen(
                list(argv),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
            )
        self.started.append(Started(name=name, process=process, log_file=log_file))
        log.info("started %s (pid %d): %s", name, process.pid, " ".join(argv))
        return process

    def logs(self, *, tail: int = 60) -> str:
        parts = []
        for s in self.started:
            lines = (
                s.log_file.read_text(errors="replace").splitlines()[-tail:]
                if s.log_file.exists()
                else []
            )
            parts.append(
                f"----- {s.name} (pid {s.process.pid}, exit {s.process.poll()}) -----\n"
                + "\n".join(lines)
            )
        return "\n".join(parts)

    def stop_all(self, *, timeout: float = 15.0) -> list[int]:
        """Stop what we started and every helper it left behind, by pid.

        SIGTERM the started processes (SuperNodes first, then the SuperLink), then SIGTERM the
        helpers of the snapshot still alive, then SIGKILL whatever is left. Returns the pids that
        needed SIGKILL.
        """
        roots = [s.process.pid for s in self.started]
        tree = descendants(roots)
        for s in reversed(self.started):
            if s.process.poll() is None:
                s.process.terminate()
        hard: list[int] = []
        for s in reversed(self.started):
            try:
                s.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                s.process.kill()
                s.process.wait(timeout=5)
                hard.append(s.process.pid)
        tree = {pid for pid in tree if _alive(pid)}
        for pid in sorted(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while tree and time.monotonic() < deadline:
            time.sleep(0.2)
            tree = {pid for pid in tree if _alive(pid)}
        for pid in sorted(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                hard.append(pid)
        return hard


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
