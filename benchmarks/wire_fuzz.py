"""Wire fuzzer: hostile uploads through the real ServerApp round loop, counted.

Each batch is one federation (`server_app.serve`) of three honest clients and `--per-run`
hostile ones on an in-process grid (tests/federation/hostile.py: every message and reply goes
through Flower's protobuf); each hostile client sends a seeded hostile upload (wrong d, dtype,
NaN/Inf, norms up to 3e38, weights up to 3e38, bad n_k, too many items, over the byte cap, bad
shapes, forged .npy headers, pickles, broken records, wrong names). The run must complete, drop
every hostile client with a reason, and end with the M_g of the honest-only run, bit for bit.

    PYTHONPATH=src python benchmarks/wire_fuzz.py              # 10 x 1000 = 10,000 uploads
    PYTHONPATH=src python benchmarks/wire_fuzz.py --runs 2 --per-run 100
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from flwr.supercore.task_identity import TaskIdentity

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "federation"))

from hostile import FuzzGrid, fuzz_spec  # noqa: E402

from feddymem.federation.limits import upload_limits  # noqa: E402
from feddymem.federation.runconfig import ServerSettings  # noqa: E402
from feddymem.federation.server_app import serve  # noqa: E402
from feddymem.federation.spec import load_spec  # noqa: E402

HONEST = ["honest-a", "honest-b", "honest-c"]


def _federation(folder: Path, hostile: list[str], seed: int) -> tuple[dict, torch.Tensor, FuzzGrid]:  # type: ignore[type-arg]
    folder.mkdir(parents=True)
    spec_path = fuzz_spec(folder / "spec.toml", [*HONEST, *hostile])
    spec = load_spec(spec_path)
    limits = upload_limits(spec.model, max_items=spec.federation.max_memory_items)
    grid = FuzzGrid(HONEST, hostile, limits, seed=seed)
    results = serve(grid, ServerSettings(spec=spec_path, out=folder / "out", resume=False))  # type: ignore[arg-type]
    memory = torch.load(folder / "out" / "global_memory.pt", weights_only=True)["global_memory"]
    return results, memory, grid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--per-run", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # one warning per drop otherwise
    # Flower stamps new messages with the running task's identity, as a ServerApp process has
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    t0 = time.perf_counter()
    crashes = 0
    dropped_with_reason = 0
    sent = 0
    categories: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    identical = 0
    with tempfile.TemporaryDirectory(prefix="wire-fuzz-") as tmp:
        _, honest_memory, _ = _federation(Path(tmp) / "honest", [], seed=0)
        for run in range(args.runs):
            hostile = [f"hostile-{run:02d}-{i:05d}" for i in range(args.per_run)]
            sent += len(hostile)
            try:
                results, memory, grid = _federation(Path(tmp) / f"run-{run}", hostile, seed=run)
            except Exception as err:  # a crash of the server loop
                crashes += 1
                print(f"run {run}: server crashed: {type(err).__name__}: {err}")
                continue
            categories.update(grid.categories.values())
            dropped = {r["client"]: r for r in results["rejected"] if r["client"] in set(hostile)}
            dropped_with_reason += sum(1 for r in dropped.values() if r["reason"])
            kinds.update(r["kind"] for r in dropped.values())
            same = results["status"] == "completed" and torch.equal(memory, honest_memory)
            identical += int(same)
            print(
                f"run {run}: {len(hostile)} hostile uploads, {len(dropped)} dropped, "
                f"status {results['status']}, M_g identical to honest-only: {same}"
            )
    wall = time.perf_counter() - t0
    print()
    print("category    uploads")
    for name, count in sorted(categories.items()):
        print(f"{name:<11} {count:>7}")
    print(f"drop kinds: {dict(kinds)}")
    print(
        f"hostile uploads sent: {sent}; server crashes: {crashes}; dropped with a reason: "
        f"{dropped_with_reason}; runs with M_g identical to the honest-only run: "
        f"{identical}/{args.runs}; wall {wall:.1f} s"
    )
    ok = crashes == 0 and dropped_with_reason == sent and identical == args.runs
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
