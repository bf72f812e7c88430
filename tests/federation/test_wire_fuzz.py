"""Fuzzing the wire format: seeded hostile uploads (random shapes, dtypes, magnitudes, sizes,
forged .npy headers, broken records), each refused with a reason; the honest M_g unchanged.
benchmarks/wire_fuzz.py runs the same with 10,000 uploads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from hostile import CATEGORIES, FuzzGrid, fuzz_spec, honest_upload, hostile_upload

from feddymem.federation.limits import upload_limits
from feddymem.federation.runconfig import ServerSettings
from feddymem.federation.server_app import read_upload, serve
from feddymem.federation.spec import load_spec

BUDGET = 600  # uploads decoded and validated in the unit fuzz (about a second)


def _limits(tmp_path: Path, names: list[str]):  # type: ignore[no-untyped-def]
    spec = load_spec(fuzz_spec(tmp_path / "spec.toml", names))
    return upload_limits(spec.model, max_items=spec.federation.max_memory_items)


def test_every_fuzzed_upload_is_refused_with_a_reason(tmp_path: Path) -> None:
    limits = _limits(tmp_path, ["site"])
    rng = np.random.default_rng(20)
    seen: Counter[str] = Counter()
    for _ in range(BUDGET):
        content, category = hostile_upload(rng, limits, "site")
        wired = recorddict_from_proto(recorddict_to_proto(content))
        with pytest.raises(ValueError) as caught:  # MemoryRejected or WireError, nothing else
            read_upload(wired, name="site", limits=limits)
        assert str(caught.value), category
        seen[category] += 1
    assert set(seen) == set(CATEGORIES)  # the budget reaches every category
    for _ in range(20):  # and the honest uploads pass the same path
        content = recorddict_from_proto(recorddict_to_proto(honest_upload(rng, limits, "site")))
        assert read_upload(content, name="site", limits=limits).vectors.shape[1] == limits.dim


def _run(tmp_path: Path, honest: list[str], hostile: list[str], seed: int) -> dict:  # type: ignore[type-arg]
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec_path = fuzz_spec(tmp_path / "spec.toml", [*honest, *hostile])
    spec = load_spec(spec_path)
    limits = upload_limits(spec.model, max_items=spec.federation.max_memory_items)
    grid = FuzzGrid(honest, hostile, limits, seed=seed)
    return serve(grid, ServerSettings(spec=spec_path, out=tmp_path / "out", resume=False))  # type: ignore[arg-type]


def test_a_federation_under_fuzzed_uploads_keeps_the_honest_m_g(tmp_path: Path) -> None:
    honest = ["honest-a", "honest-b"]
    hostile = [f"hostile-{i:03d}" for i in range(60)]
    attacked = _run(tmp_path / "attacked", honest, hostile, seed=5)
    _run(tmp_path / "clean", honest, [], seed=5)
    assert attacked["status"] == "completed"
    dropped = {r["client"]: r for r in attacked["rejected"]}
    assert sorted(dropped) == hostile
    assert all(r["round"] == 0 and r["reason"] for r in dropped.values())
    assert attacked["evaluated_clients"] == honest
    m_attacked, m_clean = (
        torch.load(tmp_path / run / "out" / "global_memory.pt")["global_memory"]
        for run in ("attacked", "clean")
    )
    assert torch.equal(m_attacked, m_clean)
