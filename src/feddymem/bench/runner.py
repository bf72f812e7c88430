"""Run the (method, data set, seed) rows of a preset and write them as they finish.

Output folder:

``results.csv``      one row per (method, data set, seed), columns `COLUMNS`; metrics are the
                     mean over the data set's clients, bytes per client per training round
``clients.jsonl``    the per-client metrics behind every row
``scores/``          per-client (labels, image scores) of every row, for ROC curves
``failures.jsonl``   rows that raised, with the error (not in the CSV; a re-run retries them)
``data/``            the mixtures, built once; ``cache/`` patch features shared by all rows
``table.md`` and ``plots/`` from `feddymem.bench.report`

A row already in ``results.csv`` is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from feddymem.bench.methods import METHODS, METRIC_KEYS, Outcome, Task
from feddymem.bench.presets import PRESETS, Preset
from feddymem.bench.results import append_row, drop_rows, read_rows, rerun_command

__all__ = ["BenchError", "run_bench"]

log = logging.getLogger(__name__)

# Where the real surface sets live on the project's machines: ../shared/data beside the repo.
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


class BenchError(ValueError):
    """A preset, data set or method name is unknown, or a data set cannot be built."""


@dataclass(frozen=True)
class Dataset:
    """A data set of the table: its name and the federation spec naming its clients."""

    name: str
    spec_path: Path


class _PeakRss:
    """Peak resident memory of this process and all its descendants (Ray's workers too),
    sampled every `interval` seconds while the block runs."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue  # gone between listing and reading
        return int(total)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakRss:
        self.peak = self._tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_rss())


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean over clients; None when any client has no value (a partial mean would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean([float(v) for v in values if v is not None]))


def row_of(task: Task, method: str, outcome: Outcome, *, wall_s: float, peak_mb: float) -> dict:
    """The CSV row of one finished task."""
    if not outcome.clients:
        raise BenchError(f"{method} on {task.dataset}: no client produced a result")
    row: dict[str, Any] = {
        "method": method,
        "dataset": task.dataset,
        "clients": len(outcome.clients),
        "seed": task.seed,
    }
    for key in METRIC_KEYS:
        row[key] = _mean([c[key] for c in outcome.clients.values()])
    row.update(
        bytes_up=round(outcome.bytes_up),
        bytes_down=round(outcome.bytes_down),
        rounds=outcome.rounds,
        wall_s=round(wall_s, 1),
        peak_rss_mb=round(peak_mb, 1),
    )
    return row


def _append_json(path: Path, payload: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(payload) + "\n")


def _save_scores(out: Path, task: Task, method: str, outcome: Outcome) -> None:
    if not outcome.scores:
        return
    folder = out / "scores" / task.dataset / method
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name, (labels, scores) in outcome.scores.items():
        arrays[f"{name}__labels"] = np.asarray(labels)
        arrays[f"{name}__scores"] = np.asarray(scores)
    np.savez(folder / f"seed{task.seed}.npz", **arrays)  # type: ignore[arg-type]


def resolve_datasets(
    preset: Preset,
    out: Path,
    *,
    names: Sequence[str],
    specs: Mapping[str, Path],
    shared_data: Path | None,
) -> list[Dataset]:
    """Build (once) the preset's mixtures; a user's own specs are taken as they are.

    A mixture that needs data this machine lacks is skipped with a warning (the table then
    says it is missing), so a quick run works anywhere.
    """
    if shared_data is None and DEFAULT_SHARED_DATA.is_dir():
        shared_data = DEFAULT_SHARED_DATA
    out_data = out / "data"
    datasets = []
    for name in names:
        if name in specs:
            spec = Path(specs[name]).expanduser().resolve()
            if not spec.is_file():
                raise BenchError(f"data set {name}: spec file {spec} does not exist")
            datasets.append(Dataset(name, spec))
            continue
        from feddymem.data.generated.mixtures.build import build_mixture
        from feddymem.data.generated.mixtures.registry import MIXTURES
        from feddymem.data.generated.protocols import Protocol, ProtocolError

        base, _, tag = name.partition(".")
        if base not in MIXTURES:
            raise BenchError(
                f"unknown data set {name!r}: known mixtures {sorted(MIXTURES)} (optionally "
                "MIXTURE.few-K or MIXTURE.new-variant), or give NAME=SPEC.toml for your own"
            )
        try:
            protocol = Protocol.parse(tag or "standard")
        except ProtocolError as err:
            raise BenchError(f"data set {name!r}: {err}") from None
        if MIXTURES[base].needs_shared_data and (shared_data is None or not shared_data.is_dir()):
            log.warning(
                "data set %s skipped: it needs the real surface sets (--shared-data DIR, tried %s)",
                name,
                shared_data or DEFAULT_SHARED_DATA,
            )
            continue
        spec = build_mixture(
            base,
            out_data,
            scale=preset.scale,
            seed=0,
            shared_data=shared_data,
            protocol=protocol,
        )
        datasets.append(Dataset(name, spec))
    return datasets


@contextmanager
def _timed() -> Iterator[list[float]]:
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


def run_bench(
    preset: str | Preset,
    out: str | Path,
    *,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    specs: Mapping[str, Path] | None = None,
    shared_data: Path | None = None,
    force: bool = False,
    keep_work: bool = False,
) -> list[dict[str, Any]]:
    """Run the preset's rows (or the given subset) into `out`; returns every row of the CSV.

    Args:
        preset: ``quick``, ``full`` or a `Preset`.
        out: Output folder (see the module docstring).
        datasets / methods / seeds: Subsets of the preset's (a user's spec names count too).
        specs: Extra data sets, name -> federation spec TOML (any MVTec-layout roots).
        shared_data: Folder holding the real surface sets (``magnetic_tile``, ``kolektorsdd``).
        force: Run rows again even when ``results.csv`` has them.
        keep_work: Keep each row's working folder (client states, exported models).
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise BenchError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[preset]
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    specs = dict(specs or {})
    names = list(datasets or preset.datasets)
    names += [n for n in specs if n not in names and datasets is None]
    method_names = list(methods or preset.methods)
    unknown = [m for m in method_names if m not in METHODS]
    if unknown:
        raise BenchError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    seed_list = list(preset.seeds if seeds is None else seeds)

    resolved = resolve_datasets(preset, out, names=names, specs=specs, shared_data=shared_data)
    _write_preset(out, preset, resolved)
    todo = _plan(out, resolved, method_names, seed_list, force=force)
    for i, (dataset, method, seed) in enumerate(todo, 1):
        log.info("[%d/%d] %s on %s, seed %d", i, len(todo), method, dataset.name, seed)
        _run_row(out, preset, dataset, method, seed, keep_work=keep_work)
    rows = read_rows(out)
    if any(not math.isfinite(r["image_auroc"] or 0.0) for r in rows):
        log.warning("some rows have a non-finite image AUROC")
    from feddymem.bench.report import write_report

    write_report(out, preset=preset.name)
    return rows


def _write_preset(out: Path, preset: Preset, resolved: Sequence[Dataset]) -> None:
    """``preset.json``: what the rows of this folder were run with."""
    (out / "preset.json").write_text(
        json.dumps(
            {
                "preset": preset.name,
                "scale": preset.scale,
                "rounds": preset.rounds,
                "model": preset.model,
                "datasets": {d.name: str(d.spec_path) for d in resolved},
            },
            indent=2,
        ),
        encoding="utf-8",
    )


def _plan(
    out: Path,
    resolved: Sequence[Dataset],
    method_names: Sequence[str],
    seed_list: Sequence[int],
    *,
    force: bool,
) -> list[tuple[Dataset, str, int]]:
    """The rows still to run, in order: seed by seed, baselines and FedDyMem before ablations,
    so an interrupted run still has every cell of the table for its first seeds."""
    keys = {(m, d.name, s) for d in resolved for m in method_names for s in seed_list}
    if force:
        drop_rows(out, keys)
    done = {(r["method"], r["dataset"], r["seed"]) for r in read_rows(out)}
    main = [m for m in method_names if METHODS[m].family != "ablation"]
    ablations = [m for m in method_names if METHODS[m].family == "ablation"]
    todo = [
        (d, m, s)
        for s in seed_list
        for group in (main, ablations)
        for d in resolved
        for m in group
        if (m, d.name, s) not in done
    ]
    log.info("%d row(s) to run, %d already in %s", len(todo), len(keys) - len(todo), out)
    return todo


def _run_row(
    out: Path, preset: Preset, dataset: Dataset, method: str, seed: int, *, keep_work: bool
) -> None:
    """Run one (method, data set, seed) row and append it; a failure goes to failures.jsonl."""
    work = out / "work" / dataset.name / method / f"seed{seed}"
    if work.exists():
        shutil.rmtree(work)  # a half-finished row must not leak into this one
    task = Task(
        dataset=dataset.name,
        spec_path=dataset.spec_path,
        seed=seed,
        rounds=preset.rounds,
        model=preset.model,
        work=work,
        feature_cache=out / "cache",
    )
    try:
        with _PeakRss() as rss, _timed() as wall:
            outcome = METHODS[method].run(task)
        row = row_of(task, method, outcome, wall_s=wall[0], peak_mb=rss.peak / 2**20)
    except Exception as err:  # one failing row must not lose the others
        log.exception("%s on %s, seed %d failed", method, dataset.name, seed)
        _append_json(
            out / "failures.jsonl",
            {
                "method": method,
                "dataset": dataset.name,
                "seed": seed,
                "error": f"{type(err).__name__}: {err}"[:2000],
                "rerun": rerun_command(
                    preset.name, out, method=method, dataset=dataset.name, seed=seed
                ),
            },
        )
        return
    append_row(out, row)
    _append_json(
        out / "clients.jsonl",
        {"method": method, "dataset": dataset.name, "seed": seed, "clients": outcome.clients},
    )
    _save_scores(out, task, method, outcome)
    log.info(
        "%s on %s, seed %d: image AUROC %s in %.0f s",
        method,
        dataset.name,
        seed,
        "n/a" if row["image_auroc"] is None else f"{row['image_auroc']:.3f}",
        row["wall_s"],
    )
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
