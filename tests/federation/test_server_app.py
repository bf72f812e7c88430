"""The ServerApp's round loop with fake clients on an in-process grid: results, what travels,
faults (dropped clients, min_clients), checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakes import (
    DIM,
    ITEMS,
    FakeClient,
    Faults,
    Federation,
    InProcessGrid,
    InterruptedRun,
    simulated_contexts,
)
from flwr.app import ArrayRecord, Context, RecordDict

from feddymem.federation import wire
from feddymem.federation.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from feddymem.federation.client_app import build_client_app
from feddymem.federation.runconfig import ServerSettings
from feddymem.federation.server_app import FederationError, serve

NAMES = ["alpha", "beta", "gamma"]


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def test_a_clean_run_writes_results_checkpoints_and_global_memory(
    federation: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    results, grid = federation.run(out)
    assert results == _results(out)
    assert results["status"] == "completed" and results["error"] is None
    assert results["rounds_completed"] == 2 and results["resumed_from_round"] is None
    assert sorted(results["clients"]) == NAMES
    assert results["evaluated_clients"] == NAMES
    assert results["rejected"] == []
    for name in NAMES:
        client = results["clients"][name]
        assert 0.5 <= client["image_auroc"] <= 0.9
        assert client["pixel_auroc"] is not None  # the trees have masks
        per_round = results["bytes"]["per_client_per_round"][name]
        assert sorted(per_round) == ["0", "1", "2"]
        assert per_round["0"]["down"] < per_round["1"]["down"]  # round 0 carries no M_g
        assert all(v["up"] > ITEMS * DIM * 4 for v in per_round.values())
        assert client["bytes_up"] >= sum(v["up"] for v in per_round.values())
    assert results["mean"]["image_auroc"] == pytest.approx(
        np.mean([results["clients"][n]["image_auroc"] for n in NAMES])
    )
    assert len(results["wall_s"]["per_round"]) == 3 and results["wall_s"]["total"] > 0
    assert results["settings"]["federation"]["name"] == "test-fed"
    assert results["settings"]["model"]["image_size"] == 64
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "round_000.pt",
        "round_001.pt",
        "round_002.pt",
    ]
    saved = torch.load(out / "global_memory.pt", weights_only=True)
    assert saved["global_memory"].shape == (ITEMS, DIM) and saved["round"] == 2
    assert results["global_memory"]["shape"] == [ITEMS, DIM]
    assert set(grid.timeouts) == {5.0, 30.0}  # connect (identify) and round timeouts
    # every client trained rounds 0..2 once, then evaluated
    assert sorted(Faults.calls) == sorted(
        [(n, "train", t) for n in NAMES for t in range(3)] + [(n, "evaluate", 2) for n in NAMES]
    )


def test_messages_carry_only_memory_weights_counts_metrics_and_config(
    federation: Federation, tmp_path: Path
) -> None:
    _, grid = federation.run(tmp_path / "out")
    allowed_records = {
        wire.INSTRUCTIONS,
        wire.CONFIG,
        wire.GLOBAL_MEMORY,
        wire.CLIENT,
        wire.MEMORY,
        wire.MEMORY_INFO,
        wire.METRICS,
    }
    for message in grid.sent + grid.received:
        if message.has_error():
            continue
        content = message.content
        assert set(content.keys()) <= allowed_records, content.keys()
        for key, record in content.items():
            if not isinstance(record, ArrayRecord):
                continue
            assert set(record.keys()) <= wire.ARRAY_KEYS[key]  # no generator weights, no images
            for array in record.values():
                assert len(array.shape) <= 2
                # a memory item per row, d wide: nothing image-sized travels
                assert array.shape[0] <= ITEMS and (len(array.shape) == 1 or array.shape[1] == DIM)
    kinds = {m.metadata.message_type for m in grid.sent}
    assert kinds == {"query", "train", "evaluate"}
    evaluate_replies = [m for m in grid.received if m.metadata.message_type == "evaluate"]
    assert evaluate_replies and all(wire.MEMORY not in m.content for m in evaluate_replies)


@pytest.mark.parametrize(
    ("kind", "round_idx", "reason"),
    [
        ("nan", 1, "NaN or Inf"),
        ("inf", 0, "NaN or Inf"),
        ("shape", 1, "2-D"),
        ("dim", 1, f"expected {DIM}"),
        ("dim", 0, f"vector length d = {DIM + 1}, expected {DIM}"),
        ("short", 0, f"vector length d = 1, expected {DIM}"),
        ("huge", 1, "L2 norm above the bound"),
        ("huge", 0, "L2 norm above the bound"),
        ("poison", 2, "L2 norm above the bound"),
        ("heavy", 1, "L2 norm above the bound"),
        ("float64", 2, "float32"),
        ("zero_weight", 1, "> 0"),
        ("weight_count", 1, "weight count"),
        ("no_images", 1, "n_images"),
        ("too_many", 1, "exceeds the cap"),
        ("raise", 1, "client error: RuntimeError: injected failure in round 1"),
        ("silent", 1, "timed out: no reply within round_timeout_s"),
        ("unavailable", 1, "node unavailable"),
    ],
)
def test_a_faulty_client_is_dropped_and_the_run_goes_on(
    tmp_path: Path,
    trees: dict[str, Path],
    fake_client: type[FakeClient],
    kind: str,
    round_idx: int,
    reason: str,
) -> None:
    fed = Federation(tmp_path, trees, extra="max_memory_items = 50")
    Faults.plan = {"beta": (round_idx, kind)}
    out = tmp_path / "out"
    results, _ = fed.run(out)
    assert results["status"] == "completed"
    [rejected] = results["rejected"]
    assert (
        rejected["client"] == "beta"
        and rejected["round"] == round_idx
        and rejected["phase"] == "train"
    )
    assert isinstance(rejected["node_id"], int)
    assert reason in rejected["reason"]
    assert results["evaluated_clients"] == ["alpha", "gamma"]
    assert results["clients"]["beta"]["active"] is False
    # beta is out for good: no train call after the faulty round, no evaluation
    assert not [
        c for c in Faults.calls if c[0] == "beta" and (c[2] > round_idx or c[1] == "evaluate")
    ]
    for record in results["rounds"]:
        expected = NAMES if record["round"] < round_idx else ["alpha", "gamma"]
        assert record["accepted"] == expected


def test_below_min_clients_fails_the_run_clearly(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    fed = Federation(tmp_path, trees, min_clients=3)
    Faults.plan = {"gamma": (1, "nan")}
    out = tmp_path / "out"
    with pytest.raises(
        FederationError, match=r"round 1: 2 client\(s\) left, min_clients is 3"
    ) as info:
        fed.run(out)
    assert "gamma: vectors hold NaN" in str(info.value)
    results = _results(out)
    assert results["status"] == "failed"
    assert "min_clients is 3" in results["error"]
    assert results["rounds_completed"] == 0
    assert latest_checkpoint(out) == out / "checkpoints" / "round_000.pt"


def test_down_to_min_clients_then_below(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    fed = Federation(tmp_path, trees, min_clients=2, rounds=3)
    Faults.plan = {"alpha": (1, "raise"), "beta": (3, "silent")}
    with pytest.raises(FederationError, match="round 3: 1 client"):
        fed.run(tmp_path / "out")
    results = _results(tmp_path / "out")
    assert [r["client"] for r in results["rejected"]] == ["alpha", "beta"]
    assert results["rounds_completed"] == 2


def test_an_evaluation_failure_is_listed_not_fatal(federation: Federation, tmp_path: Path) -> None:
    Faults.plan = {"gamma": (-1, "raise")}
    results, _ = federation.run(tmp_path / "out")
    assert results["status"] == "completed"
    assert results["evaluated_clients"] == ["alpha", "beta"]
    assert results["rejected"][0]["phase"] == "evaluate"


@pytest.mark.parametrize("clients_did_the_round", [False, True])
def test_resume_reaches_the_uninterrupted_result(
    tmp_path: Path,
    trees: dict[str, Path],
    fake_client: type[FakeClient],
    clients_did_the_round: bool,
) -> None:
    fed = Federation(tmp_path, trees, rounds=3)
    whole, _ = fed.run(tmp_path / "whole")
    calls_whole = len(Faults.calls)

    Faults.calls = []
    out = tmp_path / "cut"
    with pytest.raises(InterruptedRun):
        fed.run(out, crash_before_round=2, crash_after_clients=clients_did_the_round)
    assert load_checkpoint(latest_checkpoint(out)).round_idx == 1  # type: ignore[arg-type]
    resumed, _ = fed.run(out, resume=True)

    assert resumed["status"] == "completed" and resumed["resumed_from_round"] == 1
    assert torch.equal(
        torch.load(tmp_path / "whole" / "global_memory.pt", weights_only=True)["global_memory"],
        torch.load(out / "global_memory.pt", weights_only=True)["global_memory"],
    )
    for name in NAMES:
        assert resumed["clients"][name]["image_auroc"] == whole["clients"][name]["image_auroc"]
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3]
    assert resumed["run_id"] != whole["run_id"]
    # the resumed run asked each client for round 2 again; a client that had done it replayed it
    assert len(Faults.calls) == calls_whole + 3 * clients_did_the_round


def test_resume_without_checkpoint_starts_fresh_and_fresh_run_refuses_old_checkpoints(
    federation: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    results, _ = federation.run(out, resume=True)
    assert results["resumed_from_round"] is None and results["rounds_completed"] == 2
    with pytest.raises(FederationError, match="holds checkpoints of an earlier run"):
        federation.run(out)
    done, _ = federation.run(out, resume=True)  # all rounds done: straight to evaluation
    assert done["resumed_from_round"] == 2
    assert done["clients"]["alpha"]["image_auroc"] == results["clients"]["alpha"]["image_auroc"]


def test_resume_with_other_settings_is_refused(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    out = tmp_path / "out"
    Federation(tmp_path, trees).run(out)
    changed = Federation(tmp_path, trees, model="image_size = 96\nclient_memory_size = 5")
    # the image size also moves the weight bound derived from it
    with pytest.raises(CheckpointError, match=r"differing: \['model', 'upload_limits'\]"):
        changed.run(out, resume=True)
    reseeded = Federation(tmp_path, trees)
    reseeded.spec.write_text(reseeded.spec.read_text().replace("seed = 3", "seed = 4"))
    with pytest.raises(CheckpointError, match=r"differing: \['federation', 'model'\]"):
        reseeded.run(out, resume=True)


def test_resume_may_change_the_timeouts(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    out = tmp_path / "out"
    fed = Federation(tmp_path, trees, min_clients=3)
    Faults.plan = {"beta": (1, "silent")}
    with pytest.raises(FederationError, match="round 1"):
        fed.run(out)
    Faults.plan = {}
    patient = fed.spec.read_text().replace("round_timeout_s = 30", "round_timeout_s = 90")
    fed.spec.write_text(patient)
    resumed, grid = fed.run(out, resume=True)
    assert resumed["status"] == "completed" and resumed["resumed_from_round"] == 0
    assert resumed["settings"]["federation"]["round_timeout_s"] == 90
    assert 90.0 in grid.timeouts


def _deployed_grid(sites: list[tuple[str, str]], work: Path) -> InProcessGrid:
    contexts = {
        500 + i: Context(
            run_id=1,
            node_id=500 + i,
            state=RecordDict(),
            run_config={},
            node_config={"name": name, "data": data, "work-dir": str(work)},
        )
        for i, (name, data) in enumerate(sites)
    }
    names = {node: sites[i][0] for i, node in enumerate(contexts)}
    return InProcessGrid(build_client_app(), contexts, names=names)


def test_unknown_and_duplicate_names_are_refused_at_identify(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    spec = Federation(tmp_path, trees).spec
    sites = [
        ("alpha", str(trees["alpha"])),
        ("beta", str(trees["beta"])),
        ("beta", str(trees["gamma"])),
        ("intruder", str(trees["gamma"])),
    ]
    grid = _deployed_grid(sites, tmp_path / "work")
    out = tmp_path / "out"
    results = serve(grid, ServerSettings(spec=spec, out=out, resume=False))  # type: ignore[arg-type]
    reasons = {(r["client"], r["reason"].split(" (")[0].split(":")[0]) for r in results["rejected"]}
    assert ("beta", "name already taken by node 501") in reasons
    assert ("intruder", "not a client of spec.toml") in reasons
    assert ("gamma", "did not connect") in reasons
    assert results["evaluated_clients"] == ["alpha", "beta"]


def test_too_few_nodes_connect(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    fed = Federation(tmp_path, trees, min_clients=3, extra="")
    fed.spec.write_text(
        fed.spec.read_text().replace("connect_timeout_s = 5", "connect_timeout_s = 0.5")
    )
    app = build_client_app(defaults={"spec": str(fed.spec), "work-dir": str(tmp_path / "w")})
    contexts = simulated_contexts(2)
    grid = InProcessGrid(app, contexts, names={n: NAMES[i] for i, n in enumerate(contexts)})
    with pytest.raises(
        FederationError, match=r"only 2 node\(s\) connected within connect_timeout_s = 0.5 s"
    ):
        serve(grid, ServerSettings(spec=fed.spec, out=tmp_path / "out", resume=False))  # type: ignore[arg-type]


def test_global_memory_is_sent_from_round_one(federation: Federation, tmp_path: Path) -> None:
    _, grid = federation.run(tmp_path / "out")
    for message in grid.sent:
        if message.metadata.message_type != "train":
            continue
        t = wire.instructions_from_content(message.content).round_idx
        assert (wire.GLOBAL_MEMORY in message.content) == (t > 0)
        assert wire.config_from_content(message.content).image_size == 64
        assert message.metadata.group_id == f"round-{t}"


def test_a_short_upload_cannot_win_round_zero_by_vote(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    """Two sites, one uploads d = 1 in round 0: the spec's d decides, the honest site stays."""
    two = {name: trees[name] for name in ("alpha", "beta")}
    fed = Federation(tmp_path, two, min_clients=1)
    Faults.plan = {"alpha": (0, "short")}
    results, _ = fed.run(tmp_path / "out")
    assert results["status"] == "completed"
    assert [r["client"] for r in results["rejected"]] == ["alpha"]
    assert results["evaluated_clients"] == ["beta"]
    assert results["global_memory"]["shape"][1] == DIM


def test_limits_are_in_the_resolved_settings(federation: Federation, tmp_path: Path) -> None:
    results, _ = federation.run(tmp_path / "out")
    limits = results["settings"]["upload_limits"]
    assert limits["dim"] == DIM and limits["max_norm"] > 0 and limits["max_bytes"] > 0


def test_hostile_uploads_leave_m_g_as_the_honest_run_makes_it(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    """A client that uploads items near 1e20 (passes every old check) is dropped; M_g equals
    the run without that client."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fed = Federation(tmp_path / "a", trees)
    Faults.plan = {"gamma": (0, "poison")}
    attacked, _ = fed.run(tmp_path / "a" / "out")
    honest = Federation(tmp_path / "b", {n: trees[n] for n in ("alpha", "beta")})
    Faults.plan = {}
    clean, _ = honest.run(tmp_path / "b" / "out")
    m_attacked = torch.load(tmp_path / "a" / "out" / "global_memory.pt")["global_memory"]
    m_clean = torch.load(tmp_path / "b" / "out" / "global_memory.pt")["global_memory"]
    assert torch.equal(m_attacked, m_clean)
    assert attacked["mean"]["image_auroc"] == clean["mean"]["image_auroc"]


def test_an_aggregation_failure_drops_the_offending_upload(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the merge still raise on one upload, that upload is dropped and the round goes on."""
    from feddymem.federation import server_app

    real = server_app.aggregate_memories

    def fragile(memories: list[Any], **kwargs: Any) -> torch.Tensor:
        if any(int(m.n_images) == 5 for m in memories):  # beta has 5 training images
            raise RuntimeError("invalid cluster assignment")
        return real(memories, **kwargs)

    monkeypatch.setattr(server_app, "aggregate_memories", fragile)
    results, _ = federation.run(tmp_path / "out")
    assert results["status"] == "completed"
    [rejected] = results["rejected"]
    assert rejected["client"] == "beta" and rejected["round"] == 0
    assert "aggregation failed with this upload" in rejected["reason"]
    assert "invalid cluster assignment" in rejected["reason"]
    assert results["evaluated_clients"] == ["alpha", "gamma"]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("unavailable", "unavailable"),
        ("silent", "timeout"),
        ("raise", "client_error"),
        ("nan", "invalid"),
        ("heavy", "invalid"),
    ],
)
def test_a_drop_says_what_happened(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient], fault: str, kind: str
) -> None:
    """The SuperLink's "node unavailable" reply (sent from its own node id) is matched to the
    node it speaks for, not discarded and reported as a time-out."""
    fed = Federation(tmp_path, trees)
    Faults.plan = {"beta": (1, fault)}
    results, _ = fed.run(tmp_path / "out")
    [rejected] = results["rejected"]
    assert rejected["client"] == "beta" and rejected["kind"] == kind
    if fault == "unavailable":
        assert "Node Unavailable" in rejected["reason"]
        assert "round_timeout_s" not in rejected["reason"]


def test_a_node_cannot_take_the_name_bound_to_another_node(
    tmp_path: Path, trees: dict[str, Path], fake_client: type[FakeClient]
) -> None:
    """With `node_id` in the spec (the id the SuperLink gave the site's registered key), a node
    that answers with another site's name is refused, and the real site keeps its place even
    when the impostor's node id sorts first (without the binding it would take the name)."""
    spec = Federation(tmp_path, trees, min_clients=1).spec
    text = spec.read_text()
    text = text.replace('name = "alpha"', 'name = "alpha"\nnode_id = 501')
    text = text.replace('name = "beta"', 'name = "beta"\nnode_id = 15965234237041821372')
    spec.write_text(text)
    sites = [
        ("alpha", str(trees["gamma"])),  # node 500: the impostor
        ("alpha", str(trees["alpha"])),  # node 501: alpha's registered node
        ("beta", str(trees["beta"])),  # node 502: not beta's registered node
    ]
    grid = _deployed_grid(sites, tmp_path / "work")
    results = serve(grid, ServerSettings(spec=spec, out=tmp_path / "out", resume=False))  # type: ignore[arg-type]
    by_node = {r["node_id"]: r for r in results["rejected"] if r["node_id"] is not None}
    assert "impersonation" in by_node[500]["reason"] and by_node[500]["client"] == "alpha"
    assert "bound to node 15965234237041821372" in by_node[502]["reason"]
    assert results["evaluated_clients"] == ["alpha"]
    assert results["settings"]["clients"][0]["node_id"] == 501
