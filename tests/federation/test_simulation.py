"""Real FedDyMem clients: one simulation on Flower's engine (Ray), and a resume in process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from fakes import InProcessGrid, InterruptedRun, simulated_contexts, smoke_federation

from feddymem.federation.client_app import build_client_app
from feddymem.federation.runconfig import ServerSettings
from feddymem.federation.server_app import serve
from feddymem.federation.simulation import run_federation


@pytest.mark.slow
def test_two_clients_two_rounds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = smoke_federation(tmp_path / "fed")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="feddymem.federation.participants"):
        results = run_federation(spec, out, num_cpus=2, cpus_per_client=1.0)
    # progress inside a round: each client's reply logged as it arrives, on Flower's own grid
    done = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    for what in ("round 0", "round 2", "evaluation"):
        for name in ("site-a", "site-b"):
            assert any(m.startswith(f"{what}: client {name} (node ") for m in done), done

    assert results["status"] == "completed"
    assert results["evaluated_clients"] == ["site-a", "site-b"]
    assert results["rejected"] == []
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    for name in ("site-a", "site-b"):
        client = results["clients"][name]
        # textures with bright / dark discs: the detector must see them
        assert client["image_auroc"] > 0.7, client
        assert client["pixel_auroc"] is not None and client["aupro"] is not None
        assert Path(client["model_file"]).is_file()
        # the site's own threshold (its held-out normals against M_g, the detector's rule): what
        # it flags on the site's test set, the one saved in its model file
        assert 0.0 <= client["false_alarm_rate_at_threshold"] <= 1.0
        assert client["oracle_recall_at_threshold"] >= client["recall_at_threshold"]
        low, high = client["false_alarm_rate_ci95_low"], client["false_alarm_rate_ci95_high"]
        assert low <= client["false_alarm_rate_at_threshold"] <= high
        assert client["test_normals"] >= 1 and client["calibration_normals"] >= 1
        # the server's k-means merged the sites' items into 64: no cross-fit, held out only
        assert client["calibration_folds"] == 0
        saved_model = torch.load(client["model_file"], weights_only=True)
        assert client["threshold"] == pytest.approx(saved_model["threshold"])
        assert saved_model["calibration_scores"].ndim == 1
        per_round = results["bytes"]["per_client_per_round"][name]
        assert sorted(per_round) == ["0", "1", "2"] and all(v["up"] > 0 for v in per_round.values())
    assert results["mean"]["image_auroc"] > 0.7
    assert isinstance(results["mean"]["recall_at_threshold"], float)
    saved = torch.load(out / "global_memory.pt", weights_only=True)
    assert saved["global_memory"].shape == tuple(results["global_memory"]["shape"])
    assert saved["global_memory"].shape[0] <= 64  # client_memory_size of smoke.toml
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round_000.pt",
        "round_001.pt",
        "round_002.pt",
    ]
    assert results["settings"]["model"]["image_size"] == 64


@pytest.mark.slow
def test_resume_with_real_clients_reaches_the_uninterrupted_result(tmp_path: Path) -> None:
    """The real FedDyMemClient, in process: a server that dies after the clients finished round
    2 resumes from checkpoint 1, the clients replay round 2, and M_g and the metrics match."""
    spec = smoke_federation(tmp_path / "fed")
    names = ["site-a", "site-b"]

    def run(out: Path, *, resume: bool, **grid_options: object) -> dict[str, object]:
        app = build_client_app(defaults={"spec": str(spec), "work-dir": str(out / "clients")})
        contexts = simulated_contexts(2)
        grid = InProcessGrid(
            app, contexts, names={node: names[i] for i, node in enumerate(contexts)}, **grid_options
        )
        return serve(grid, ServerSettings(spec=spec, out=out, resume=resume))  # type: ignore[arg-type]

    whole = run(tmp_path / "whole", resume=False)
    with pytest.raises(InterruptedRun):
        run(tmp_path / "cut", resume=False, crash_before_round=2, crash_after_clients=True)
    resumed = run(tmp_path / "cut", resume=True)

    assert resumed["resumed_from_round"] == 1
    final = [
        torch.load(out / "global_memory.pt", weights_only=True)["global_memory"]
        for out in (tmp_path / "whole", tmp_path / "cut")
    ]
    assert torch.equal(final[0], final[1])
    for name in names:
        assert resumed["clients"][name]["image_auroc"] == whole["clients"][name]["image_auroc"]  # type: ignore[index]
        assert resumed["clients"][name]["pixel_auroc"] == whole["clients"][name]["pixel_auroc"]  # type: ignore[index]
    replayed = resumed["rounds"][2]["clients"]["site-a"]["metrics"]  # type: ignore[index]
    assert replayed.get("replayed") == 1.0


@pytest.mark.slow
def test_deployed_sites_federate_by_the_public_vote(tmp_path: Path) -> None:
    """Two deployed sites (node configs naming their data and public roots), real clients in
    process: each uploads only public vectors chosen by its vote, with a noise key of its own."""
    from fakes import make_texture_site
    from flwr.app import Context, RecordDict

    from feddymem.method.client import STATE_FILE

    spec = smoke_federation(tmp_path / "fed")
    text = spec.read_text().replace(
        "[model]\n",
        "[model]\npublic_vote = true\nvote_cells = 2\nvote_noise = 2.0\ndynamic_memory = false\n",
    )
    spec.write_text(text)
    public = make_texture_site(tmp_path / "fed" / "data" / "public", texture="brick", seed=3)
    n_public = len(list((public / "train" / "good").iterdir()))
    names = ["site-a", "site-b"]
    contexts = {
        1000 + i: Context(
            run_id=1,
            node_id=1000 + i,
            node_config={
                "name": name,
                "data": str(tmp_path / "fed" / "data" / name),
                "public": str(public),
                "work-dir": str(tmp_path / "sites" / name),
            },
            state=RecordDict(),
            run_config={},
        )
        for i, name in enumerate(names)
    }
    app = build_client_app(defaults={"spec": str(spec), "work-dir": str(tmp_path / "unused")})
    grid = InProcessGrid(app, contexts, names={node: names[i] for i, node in enumerate(contexts)})
    results = serve(grid, ServerSettings(spec=spec, out=tmp_path / "out", resume=False))  # type: ignore[arg-type]

    assert set(results["clients"]) == set(names)  # type: ignore[arg-type]
    keys = []
    for name in names:
        (state,) = (tmp_path / "sites" / name / name).glob(f"*/{STATE_FILE}")
        saved = torch.load(state, weights_only=True)
        assert saved["n_images"] == n_public  # the upload counts the public images, not its own
        keys.append((state.parent / "noise.key").read_text())
    assert keys[0] != keys[1]  # each site's noise is its own secret
