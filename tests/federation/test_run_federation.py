"""`run_federation`'s glue, with the simulation engine replaced by an in-process grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClient, Faults, Federation, InProcessGrid, simulated_contexts
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from feddymem.data import DataError
from feddymem.federation import simulation
from feddymem.federation.server_app import FederationError
from feddymem.federation.spec import SpecError

NAMES = ["alpha", "beta", "gamma"]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace Flower's simulation engine: run the apps on an in-process grid, record the call."""
    calls: list[dict[str, Any]] = []

    def run_simulation(
        *,
        server_app: ServerApp,
        client_app: ClientApp,
        num_supernodes: int,
        backend_config: dict[str, Any],
        verbose_logging: bool,
    ) -> None:
        calls.append({"num_supernodes": num_supernodes, "backend_config": backend_config})
        contexts = simulated_contexts(num_supernodes)
        grid = InProcessGrid(client_app, contexts, names=dict(zip(contexts, NAMES, strict=True)))
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server_app(grid, context)  # type: ignore[arg-type]

    monkeypatch.setattr(simulation, "run_simulation", run_simulation)
    return calls


def test_runs_the_spec_and_returns_results(
    federation: Federation, engine: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out).mkdir()
    (out / "results.json").write_text('{"status": "completed", "stale": true}')
    results = simulation.run_federation(federation.spec, out, num_cpus=2, cpus_per_client=0.5)
    assert results["status"] == "completed" and "stale" not in results
    assert results["evaluated_clients"] == NAMES
    [call] = engine
    assert call["num_supernodes"] == 3
    assert call["backend_config"]["client_resources"]["num_cpus"] == 0.5
    assert call["backend_config"]["init_args"]["num_cpus"] == 2
    assert call["backend_config"]["init_args"]["log_to_driver"] is False
    # simulated clients keep their state under <out>/clients/<name>/<run>
    assert sorted(p.name for p in (out / "clients").iterdir()) == NAMES


def test_a_failed_run_raises_with_the_reason(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient], engine: list[Any]
) -> None:
    fed = Federation(tmp_path, trees, min_clients=3)
    Faults.plan = {"alpha": (0, "raise")}
    with pytest.raises(FederationError, match="min_clients is 3"):
        simulation.run_federation(fed.spec, tmp_path / "out")
    assert '"status": "failed"' in (tmp_path / "out" / "results.json").read_text()


def test_bad_spec_or_data_fail_before_the_engine_starts(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient], engine: list[Any]
) -> None:
    fed = Federation(
        tmp_path, trees, clients={"a": [str(tmp_path / "missing")], "b": [str(trees["beta"])]}
    )
    with pytest.raises(DataError, match="missing"):
        simulation.run_federation(fed.spec, tmp_path / "out")
    with pytest.raises(SpecError, match="not found"):
        simulation.run_federation(tmp_path / "nope.toml", tmp_path / "out")
    assert engine == []
