"""Fixtures of the service tests (helpers in servekit.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.serve.servekit import Models, Server, fit_models, start_server, stop_server


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return fit_models(tmp_path_factory.mktemp("serve-models"))


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(model: Path, *args: str) -> Server:
        server = start_server(model, tmp_path, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server.process)


@pytest.fixture(scope="module")
def watched_server(
    models: Models, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path, Path]]:
    """One service for the read-only tests: model A, a watched folder."""
    tmp = tmp_path_factory.mktemp("served")
    watch_in, watch_out = tmp / "line", tmp / "scored"
    watch_in.mkdir()
    server = start_server(models.a, tmp, "--watch", str(watch_in), "--watch-out", str(watch_out))
    yield server, watch_in, watch_out
    stop_server(server.process)
