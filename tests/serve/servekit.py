"""Helpers of the service tests: two tiny models (fitted once on generated texture crops) and
the real `feddymem serve` process on a free loopback port, stopped by its pid."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image
from tests.conftest import make_texture_tree

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Models:
    a: Path  # fitted on the brick crops
    b: Path  # the same memory, another threshold: another file, another version
    data: Path


def fit_models(root: Path) -> Models:
    from feddymem.config import DetectorConfig
    from feddymem.data import scan
    from feddymem.detect.detector import PatchCoreDetector

    data = make_texture_tree(root / "brick", n_train=8, n_good=3, n_bad=3)
    cfg = DetectorConfig(image_size=64, batch_size=8, coreset_ratio=0.1, seed=0)
    det = PatchCoreDetector(cfg).fit(scan(data).train)
    a = det.save(root / "a.pt", provenance={"source": "fit", "data": str(data)})
    assert det.threshold_ is not None
    det.threshold_ *= 1.5
    b = det.save(root / "b.pt", provenance={"source": "federation", "run": "test-1", "round": 2})
    return Models(a=a, b=b, data=data)


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def png_of(width: int, height: int, value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return buf.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A small PNG whose header (valid, its CRC right) claims `width` x `height` pixels."""
    png = bytearray(png_of(2, 2))
    ihdr = bytearray(png[16:29])
    ihdr[0:4] = width.to_bytes(4, "big")
    ihdr[4:8] = height.to_bytes(4, "big")
    png[16:29] = ihdr
    png[29:33] = zlib.crc32(b"IHDR" + bytes(ihdr)).to_bytes(4, "big")
    return bytes(png)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kw)  # type: ignore[arg-type]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def start_server(model: Path, tmp: Path, *args: str, token: str | None = None) -> Server:
    """`feddymem serve` on a free loopback port, once /readyz answers."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feddymem.cli",
                "-v",
                "serve",
                "--model",
                str(model),
                "--port",
                str(port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return Server(url=url, process=process, log=log)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(process)
    raise TimeoutError(f"serve not ready after 120 s: {log.read_text()}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
