"""Ray for a simulation, confined: its services on loopback only, its processes ended with it.

Ray 2.55 binds its services (GCS, raylet, object manager, workers, agents) to the node's IP,
and `ray.init(_node_ip_address="127.0.0.1")` alone does not help: Ray turns a loopback address
into the machine's outward IP unless Ray's cluster mode is off
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by `ray._private.services.get_node_ip_address`).
`contained_ray` switches it off for this process and the processes Ray starts, and
`LOOPBACK_INIT_ARGS` asks Ray for the loopback address, so every listening socket is on
127.0.0.1 (checked with ``ss -ltnp`` in tests/federation/test_localray.py).

On the way out (normal end or an exception) Ray is shut down and every process it started that
is still alive is terminated, then killed after a grace period. On SIGTERM or SIGINT the process
leaves at once with 128 + the signal number and `reaper` does the same for Ray's processes once
it is gone (shutting Ray down inside the handler races Flower's threads). SIGKILL cannot be
caught: then Ray's own fate-sharing is all there is.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Any

import psutil
import ray
from ray._private import ray_constants

from feddymem.federation import reaper

__all__ = ["LOOPBACK", "LOOPBACK_INIT_ARGS", "contained_ray"]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOOPBACK_INIT_ARGS: dict[str, Any] = {"_node_ip_address": LOOPBACK, "include_dashboard": False}
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _end(processes: list[psutil.Process]) -> None:
    killed = reaper.end(processes)
    if killed:
        log.warning("killed %d Ray process(es) that outlived shutdown", killed)


@contextmanager
def contained_ray(init_args: Mapping[str, Any]) -> Iterator[None]:
    """Start Ray with `init_args` on loopback (unless it runs already), run the body, then end
    every process Ray started.

    Ray is started here, not by Flower, so that the SIGTERM / SIGINT handlers can be set after
    `ray.init` (which installs its own, aborting ones); Flower's backend finds Ray running and
    uses it. Workers get this process's import path, as Flower would give them.
    """
    saved_env = os.environ.get(_CLUSTER_ENV)
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    before = set(_descendants())
    handlers: dict[int, Any] = {}
    try:
        if not ray.is_initialized():
            path = os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
            ray.init(
                runtime_env={"env_vars": {"PYTHONPATH": path}},
                **{**init_args, **LOOPBACK_INIT_ARGS},
            )

        def stop(signum: int, _frame: FrameType | None) -> None:
            # Flower's threads would keep the interpreter alive after an exception, and
            # `ray.shutdown()` here races them (Ray's core worker then exits the process with
            # code 1): hand Ray's processes to a reaper and leave with 128 + signal number.
            started = sorted(pid for pid in _descendants() if pid not in before)
            log.warning(
                "signal %d received: exiting; %d Ray process(es) ended after this one",
                signum,
                len(started),
            )
            _start_reaper(started)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, stop)
        yield
    finally:
        _cleanup(before, handlers, saved_env, saved_cluster)


def _start_reaper(pids: list[int]) -> None:
    """Start `reaper` (a new session, no inherited pipes) to end `pids` once this process is gone."""
    try:
        subprocess.Popen(
            [sys.executable, "-m", "feddymem.federation.reaper", str(os.getpid()), *map(str, pids)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:  # no reaper: Ray's own fate-sharing is all there is
        log.warning("could not start the reaper of Ray's processes: %s", exc)


def _cleanup(
    before: set[int], handlers: dict[int, Any], saved_env: str | None, saved_cluster: bool
) -> None:
    """Shut Ray down, end what it started, restore the handlers and Ray's cluster switch."""
    started = [p for pid, p in _descendants().items() if pid not in before]
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        _end(started)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        handlers.clear()
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        if saved_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = saved_env
