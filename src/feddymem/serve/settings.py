"""The service's options, checked once: where it listens, how it is protected, its caps."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from feddymem.config import ConfigError
from feddymem.serve.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: treated as reachable from outside


@dataclass(frozen=True)
class ServeSettings:
    model: Path
    weights: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    max_batch: int = 16
    max_wait_ms: float = 2.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    watch_in: Path | None = None
    watch_out: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"--max-wait-ms must be 0..1000, got {self.max_wait_ms}")
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ConfigError("--max-bytes and --max-pixels must be positive")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
        for opt, path in (
            ("--ssl-certfile", self.ssl_certfile),
            ("--ssl-keyfile", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{opt}: file not found: {path}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("--token must be at least 16 characters")
        if not is_loopback(self.host) and self.token is None and self.ssl_certfile is None:
            raise ConfigError(
                f"--host {self.host} is not a loopback address: give --token (bearer) or "
                "--ssl-certfile/--ssl-keyfile (TLS) to serve beyond this machine"
            )
        if self.watch_in is not None and not self.watch_in.is_dir():
            raise ConfigError(f"--watch: not a folder: {self.watch_in}")

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None
