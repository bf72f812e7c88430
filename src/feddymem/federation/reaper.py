"""End a process's leftovers after it is gone: ``python -m feddymem.federation.reaper PARENT PID...``.

`localray.contained_ray` starts this on SIGTERM / SIGINT instead of shutting Ray down inside the
signal handler: `ray.shutdown()` there races Flower's threads, which may still call into Ray,
and Ray's core worker then ends the whole process with exit code 1 from its own C++ thread.
So the handler hands the list of Ray's processes to this reaper and leaves at once with
128 + the signal number; the reaper waits for that process to be gone (so nothing Ray does on
the way down can pre-empt the exit), terminates the listed processes, waits a grace period and
kills what is left. It imports psutil only, so it starts in a fraction of a second.
"""

from __future__ import annotations

import sys

import psutil

PARENT_WAIT_S = 10.0
GRACE_S = 5.0


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return found


def reap(parent: int, pids: list[int]) -> int:
    """Wait for `parent` to end, then terminate `pids`; return how many had to be killed."""
    # take hold of the processes first: a Process object refuses to act on a reused pid
    targets = _processes(pids)
    psutil.wait_procs(_processes([parent]), timeout=PARENT_WAIT_S)
    return end(targets)


def end(processes: list[psutil.Process]) -> int:
    """Terminate `processes`, wait `GRACE_S`, kill what is left; return how many were killed."""
    alive = [p for p in processes if p.is_running()]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(left)


def main(argv: list[str]) -> int:
    if len(argv) < 1 or not all(a.isdigit() for a in argv):
        print("usage: python -m feddymem.federation.reaper PARENT [PID ...]", file=sys.stderr)
        return 2
    reap(int(argv[0]), [int(a) for a in argv[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
