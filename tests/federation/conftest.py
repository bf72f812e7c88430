"""Fixtures for the federation tests: fake clients, tiny data trees, an in-process federation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeClient, Faults, Federation, make_tree
from flwr.supercore.task_identity import TaskIdentity

from feddymem.federation import client_app as client_app_module


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Flower stamps new messages with the running task's identity; set one as a ServerApp has."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeClient]]:
    """Swap the real FedDyMemClient for `FakeClient`; clear injected faults."""
    monkeypatch.setattr(client_app_module, "client_class", lambda: FakeClient)
    Faults.plan = {}
    Faults.calls = []
    yield FakeClient
    Faults.plan = {}
    Faults.calls = []


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, Path]:
    """Three tiny MVTec-layout sources."""
    return {
        name: make_tree(tmp_path / "data" / name, seed=i, n_train=4 + i)
        for i, name in enumerate(("alpha", "beta", "gamma"))
    }


@pytest.fixture
def federation(tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]) -> Federation:
    return Federation(tmp_path, trees)
