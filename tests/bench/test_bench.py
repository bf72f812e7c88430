"""The comparison harness on three tiny texture clients: rows, resume, failures, report."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import tomli_w
from tests.conftest import make_texture_tree

from feddymem.bench import COLUMNS, METHODS, Method, Outcome, Preset, Task, run_bench
from feddymem.bench.report import summarise
from feddymem.bench.results import read_rows
from feddymem.bench.runner import BenchError

TINY = Preset(
    name="tiny",
    datasets=(),
    methods=("local-patchcore", "central-patchcore"),
    seeds=(0, 1),
    scale="quick",
    rounds=1,
    model={"image_size": 64, "batch_size": 8, "client_memory_size": 64, "kmeans_iterations": 3},
)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    clients = []
    for i, texture in enumerate(("brick", "grass", "gravel")):
        root = make_texture_tree(tmp_path / texture, texture=texture, seed=i, n_train=10)
        clients.append({"name": texture, "data": [str(root)]})
    raw = {
        "federation": {
            "name": "tiny",
            "rounds": 1,
            "min_clients": 1,
            "seed": 0,
            "round_timeout_s": 300,
            "connect_timeout_s": 120,
        },
        "clients": clients,
    }
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_resume_force_and_report(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    rows = run_bench(TINY, out, specs={"textures3": spec})
    assert len(rows) == 4  # 2 methods x 2 seeds, one data set
    raw = _rows(out)
    assert tuple(raw[0]) == COLUMNS
    for row in rows:
        assert row["dataset"] == "textures3" and row["clients"] == 3
        assert row["image_auroc"] is not None and 0.5 < row["image_auroc"] <= 1.0
        assert row["pixel_auroc"] is not None and row["aupro"] is not None
        assert row["peak_rss_mb"] > 50 and row["wall_s"] > 0
    central = [r for r in rows if r["method"] == "central-patchcore"]
    assert all(r["bytes_up"] > 0 and r["rounds"] == 1 for r in central)  # images shipped once
    assert (out / "table.md").is_file() and (out / "plots" / "auroc_bars.png").is_file()
    assert (out / "plots" / "roc_textures3.png").is_file()
    assert "local-patchcore" in (out / "table.md").read_text()

    # A second call finds every row done and runs nothing; --force runs one row again.
    before = (out / "results.csv").read_text()
    run_bench(TINY, out, specs={"textures3": spec})
    assert (out / "results.csv").read_text() == before
    run_bench(
        TINY, out, specs={"textures3": spec}, methods=["local-patchcore"], seeds=[1], force=True
    )
    again = read_rows(out)
    assert len(again) == 4
    assert sorted((r["method"], r["seed"]) for r in again) == sorted(
        (r["method"], r["seed"]) for r in rows
    )


def test_a_failing_method_is_recorded_and_the_others_go_on(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(task: Task) -> Outcome:
        raise RuntimeError("client exploded")

    monkeypatch.setitem(METHODS, "boom", Method("boom", "test", False, boom, "always fails"))
    out = tmp_path / "bench"
    preset = Preset(**{**TINY.__dict__, "methods": ("boom", "local-patchcore"), "seeds": (0,)})
    rows = run_bench(preset, out, specs={"t": spec})
    assert [r["method"] for r in rows] == ["local-patchcore"]
    failures = (out / "failures.jsonl").read_text()
    assert "client exploded" in failures and "--methods boom --seeds 0 --force" in failures


def test_unknown_names_are_clear_errors(spec: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown method"):
        run_bench(TINY, tmp_path, specs={"t": spec}, methods=["nope"])
    with pytest.raises(BenchError, match="unknown preset"):
        run_bench("huge", tmp_path)
    with pytest.raises(BenchError, match="does not exist"):
        run_bench(TINY, tmp_path, specs={"t": tmp_path / "missing.toml"})


def test_summarise_gives_mean_std_and_count() -> None:
    rows = [
        {"method": "m", "dataset": "d", "image_auroc": 0.8},
        {"method": "m", "dataset": "d", "image_auroc": 0.9},
        {"method": "m", "dataset": "e", "image_auroc": None},
    ]
    stats = summarise(rows, "image_auroc")
    mean, std, n = stats[("m", "d")]
    assert mean == pytest.approx(0.85) and std == pytest.approx(0.0707, abs=1e-3) and n == 2
    assert ("m", "e") not in stats


def test_protocol_columns_build_their_mixtures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feddymem.bench.runner import resolve_datasets
    from feddymem.data.generated.mixtures.recipe import SCALES, ScaleSizes

    monkeypatch.setitem(SCALES, "quick", ScaleSizes(train=8, good=2, anomalous=2))
    names = ["textures.few-4", "textures.new-variant"]
    found = resolve_datasets(TINY, tmp_path, names=names, specs={}, shared_data=None)
    assert [d.name for d in found] == names
    assert [d.spec_path.parent.name for d in found] == names
    with pytest.raises(BenchError, match="unknown protocol"):
        resolve_datasets(TINY, tmp_path, names=["textures.few"], specs={}, shared_data=None)
