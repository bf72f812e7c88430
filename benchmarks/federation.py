"""Benchmark of FedDyMem on Flower against local-only and pooled detectors; bytes; scaling.

    .venv/bin/python benchmarks/federation.py --out runs/bench_federation [--only accuracy,bytes,scale]

accuracy: ELPV with two sites (mono, poly; configs/elpv_two_clients.toml) through Flower's
    simulation engine, next to local-only detectors (each site alone: PatchCore, and FedDyMem
    with one client) and one PatchCore fitted on the pooled training images, every model
    scored on each site's own test set.
bytes: bytes per client per round measured on the wire (serialized Flower messages, both
    directions) next to what FedAvg would send for the generator's and the backbone's weights.
scale: wall time per round with 2, 8 and 32 simulated clients (IID split of 192 crops of
    scikit-image's brick texture, 224 px), on this machine.
Rows (JSON lines) go to <out>/federation.jsonl with the project's benchmark schema.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from feddymem.config import DetectorConfig, FedDyMemConfig, from_dict
from feddymem.data import export_elpv, scan
from feddymem.detector import PatchCoreDetector
from feddymem.features import PatchFeatureExtractor
from feddymem.federation.simulation import run_federation
from feddymem.generator import MemoryGenerator

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    row.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    rows.append(row)
    print(json.dumps(row), flush=True)


def fed_rows(
    name: str, results: dict[str, Any], *, method: str, dataset: str, seed: int
) -> list[dict[str, Any]]:
    if results.get("status") != "completed":
        raise RuntimeError(f"{name}: federation {results.get('status')}: {results.get('error')}")
    out = []
    rounds = int(results["rounds_completed"]) + 1
    for client, entry in results["clients"].items():
        out.append(
            {
                "method": method,
                "dataset": f"{dataset}/{client}",
                "clients": len(results["clients"]),
                "seed": seed,
                "image_auroc": entry.get("image_auroc"),
                "pixel_auroc": entry.get("pixel_auroc"),
                "aupro": entry.get("aupro"),
                "f1_max": entry.get("f1_max"),
                "bytes_up": entry["bytes_up"],
                "bytes_down": entry["bytes_down"],
                "rounds": rounds,
                "wall_s": round(float(results["wall_s"]["total"]), 1),
            }
        )
    return out


def write_spec(
    path: Path,
    *,
    name: str,
    rounds: int,
    clients: dict[str, list[Path]] | None = None,
    partition: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> Path:
    """A federation spec TOML (None-valued model options are left at their defaults)."""
    import tomli_w

    spec: dict[str, Any] = {
        "federation": {
            "name": name,
            "rounds": rounds,
            "min_clients": 1,
            "seed": 0,
            "round_timeout_s": 7200,
            "connect_timeout_s": 600,
        },
        "model": {k: v for k, v in (model or {}).items() if v is not None},
    }
    if clients:
        spec["clients"] = [
            {"name": n, "data": [str(r) for r in roots]} for n, roots in clients.items()
        ]
    if partition:
        spec["partition"] = partition
    path.write_text(tomli_w.dumps(spec))
    return path


def accuracy(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = args.data_dir
    sites = {cell: data / f"elpv-{cell}" for cell in ("mono", "poly")}
    for cell, root in sites.items():
        export_elpv(root, cell_type=cell, seed=args.seed)  # type: ignore[arg-type]
    spec = REPO / "configs" / "elpv_two_clients.toml"
    if args.fed_results is not None:  # reuse a finished run of the same spec (e.g. the demo's)
        fed = json.loads(args.fed_results.read_text())
    else:
        fed = run_federation(spec, args.out / "feddymem")
    for row in fed_rows("feddymem", fed, method="feddymem", dataset="elpv", seed=args.seed):
        emit(rows, row)
    model = fed["settings"].get("model", {})
    rounds = int(fed["rounds_completed"])
    # Local-only: each site alone, same model and rounds (a one-client federation).
    for cell, root in sites.items() if args.with_local_feddymem else ():
        one = write_spec(
            args.out / f"local_{cell}.toml",
            name=f"local-{cell}",
            rounds=rounds,
            clients={cell: [root]},
            model=model,
        )
        res = run_federation(one, args.out / f"local-feddymem-{cell}")
        for row in fed_rows(
            f"local-{cell}", res, method="local_feddymem", dataset="elpv", seed=args.seed
        ):
            emit(rows, row)
    if not args.skip_pooled:
        # Pooled: one client holding both sites' training images, same model and rounds, scored on
        # each site's test set.
        pooled_spec = write_spec(
            args.out / "pooled.toml",
            name="pooled",
            rounds=rounds,
            clients={"pooled": list(sites.values())},
            model=model,
        )
        pooled = run_federation(pooled_spec, args.out / "pooled-feddymem")
        from feddymem.detector import load_detector

        det = (
            load_detector(Path(pooled["clients"]["pooled"]["model_file"]))
            if "model_file" in pooled["clients"]["pooled"]
            else None
        )
        for cell, root in sites.items():
            if det is None:
                break
            m = det.evaluate(scan(root).test)
            emit(
                rows,
                {
                    "method": "pooled_feddymem",
                    "dataset": f"elpv/{cell}",
                    "clients": 1,
                    "seed": args.seed,
                    **m.as_dict(),
                    "bytes_up": 0,
                    "bytes_down": 0,
                    "rounds": rounds + 1,
                    "wall_s": round(float(pooled["wall_s"]["total"]), 1),
                },
            )
    if args.with_patchcore:
        cfg = DetectorConfig(seed=args.seed)
        for cell, root in sites.items():
            t0 = time.perf_counter()
            split = scan(root)
            m = PatchCoreDetector(cfg).fit(split.train).evaluate(split.test)
            emit(
                rows,
                {
                    "method": "local_patchcore",
                    "dataset": f"elpv/{cell}",
                    "clients": 1,
                    "seed": args.seed,
                    **m.as_dict(),
                    "bytes_up": 0,
                    "bytes_down": 0,
                    "rounds": 0,
                    "wall_s": round(time.perf_counter() - t0, 1),
                },
            )
    return fed


def bytes_table(fed: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    cfg = (
        from_dict(FedDyMemConfig, fed["settings"]["model"])
        if "model" in fed.get("settings", {})
        else FedDyMemConfig()
    )
    ext = PatchFeatureExtractor(backbone=cfg.backbone, layers=cfg.layers)
    gen = MemoryGenerator(in_channels=ext.out_channels, gamma_d=cfg.gamma_d)
    gen_bytes = sum(p.numel() for p in gen.parameters()) * 4
    tapped_bytes = sum(p.numel() for p in ext.net.parameters()) * 4
    from feddymem.backbones import build_lite_classifier

    full_bytes = (
        sum(p.numel() for p in build_lite_classifier("efficientnet-lite0").parameters()) * 4
    )
    per_round = fed["bytes"]["per_client_per_round"]
    for client, by_round in per_round.items():
        train_rounds = [r for r in by_round if r != "0"]
        up = sum(by_round[r]["up"] for r in train_rounds) / max(1, len(train_rounds))
        down = sum(by_round[r]["down"] for r in train_rounds) / max(1, len(train_rounds))
        emit(
            rows,
            {
                "method": "bytes_per_round",
                "dataset": f"elpv/{client}",
                "clients": len(per_round),
                "seed": 0,
                "feddymem_up": round(up),
                "feddymem_down": round(down),
                "fedavg_generator_each_way": gen_bytes,
                "fedavg_backbone_tapped_each_way": tapped_bytes,
                "fedavg_backbone_full_each_way": full_bytes,
                "ratio_feddymem_vs_fedavg_generator": round((up + down) / (2 * gen_bytes), 3),
                "ratio_feddymem_vs_fedavg_backbone": round((up + down) / (2 * full_bytes), 4),
            },
        )


def scale(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_texture_tree

    root = args.data_dir / "brick-224"
    if not (root / "train").is_dir():
        make_texture_tree(root, n_train=192, n_good=4, n_bad=4, size=224, seed=0)
    for n in (2, 8, 32):
        spec = write_spec(
            args.out / f"scale_{n}.toml",
            name=f"scale-{n}",
            rounds=2,
            partition={"sources": [str(root)], "num_clients": n, "scheme": "iid"},
            model={"client_memory_size": 512},
        )
        res = run_federation(spec, args.out / f"scale-{n}")
        walls = res["wall_s"]["per_round"]
        emit(
            rows,
            {
                "method": "feddymem_scale",
                "dataset": "brick-224 (192 train images, IID)",
                "clients": n,
                "seed": 0,
                "rounds": len(walls),
                "wall_s_per_round": [round(w, 1) for w in walls],
                "wall_s_training_round_mean": round(sum(walls[1:]) / max(1, len(walls) - 1), 1),
                "bytes_up": res["bytes"]["total_up"],
                "bytes_down": res["bytes"]["total_down"],
                "wall_s": round(float(res["wall_s"]["total"]), 1),
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_federation")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--only", default="accuracy,bytes,scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fed-results",
        type=Path,
        default=None,
        help="results.json of a finished run of configs/elpv_two_clients.toml to reuse",
    )
    parser.add_argument(
        "--with-local-feddymem",
        action="store_true",
        help="also run FedDyMem on each site alone (a one-client federation per site)",
    )
    parser.add_argument(
        "--skip-pooled", action="store_true", help="skip the pooled-data FedDyMem run"
    )
    parser.add_argument(
        "--with-patchcore",
        action="store_true",
        help="also fit local-only PatchCore detectors (benchmarks/detector.py has them too)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.only.split(","))
    rows: list[dict[str, Any]] = []
    fed = None
    if "accuracy" in parts:
        fed = accuracy(args, rows)
    if "bytes" in parts:
        if fed is None:
            fed = json.loads((args.out / "feddymem" / "results.json").read_text())
        bytes_table(fed, rows)
    if "scale" in parts:
        scale(args, rows)
    with (args.out / "federation.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
