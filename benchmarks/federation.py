"""Benchmark of FedDyMem on Flower against local-only and pooled detectors; bytes; scaling.

    .venv/bin/python benchmarks/federation.py --out runs/bench_federation [--only accuracy,bytes,scale]
    (other parts: memory, loss)

accuracy: ELPV with two sites (mono, poly; configs/elpv_two_clients.toml) through Flower's
    simulation engine, next to local-only detectors (each site alone: PatchCore, and FedDyMem
    with one client) and one PatchCore fitted on the pooled training images, every model
    scored on each site's own test set.
bytes: bytes per client per round measured on the wire (serialized Flower messages, both
    directions) next to what FedAvg would send for the generator's and the backbone's weights.
scale: wall time per round with 2, 8 and 32 simulated clients (IID split of 192 crops of
    scikit-image's brick texture, 224 px), on this machine.
memory: the memory-reduce and global-memory sizes on ELPV (mono, poly), without training: each
    site's round-0 memory (the identity generator) reduced by k-means or by the greedy coreset
    to a client size, merged by the server's weighted k-means into a global size, and scored
    on each site's test set, next to each site's own reduced memory alone (no federation).
    Features are extracted once (the clients' shared feature cache), so every setting costs
    only its reduce, its k-means and a k-NN search.
loss: one training step of the metric loss at the demo's shapes (8 ELPV mono cells at 256 px:
    8,192 patch vectors, against 16,384 patch vectors of 16 other cells as M_g, 152 dims):
    the K + J nearest found by the k-NN index and only their distances differentiated (the
    loss as it is) against the same loss over the full cdist matrix (as it was), time forward
    and backward, and each one's gradient against a float64 reference. Printed, not appended.
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

from feddymem.allocator import keep_freed_memory
from feddymem.config import DetectorConfig, FedDyMemConfig, from_dict
from feddymem.data import export_elpv, scan
from feddymem.detect.detector import PatchCoreDetector
from feddymem.detect.features import PatchFeatureExtractor
from feddymem.federation.simulation import run_federation
from feddymem.method.generator import MemoryGenerator
from feddymem.metrics import f1_max, image_auroc

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


def detector_row(
    method: str, cell: str, metrics: Any, *, seed: int, wall_s: float, rounds: int = 0
) -> dict[str, Any]:
    """A row for a detector fitted once (no federation) and scored on ELPV `cell`'s test set."""
    return {
        "method": method,
        "dataset": f"elpv/{cell}",
        "clients": 1,
        "seed": seed,
        **metrics.as_dict(),
        "bytes_up": 0,
        "bytes_down": 0,
        "rounds": rounds,
        "wall_s": round(wall_s, 1),
    }


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
        from feddymem.detect.registry import load_detector

        det = (
            load_detector(Path(pooled["clients"]["pooled"]["model_file"]))
            if "model_file" in pooled["clients"]["pooled"]
            else None
        )
        for cell, root in sites.items():
            if det is None:
                break
            m = det.evaluate(scan(root).test)
            wall_s = float(pooled["wall_s"]["total"])
            emit(
                rows,
                detector_row(
                    "pooled_feddymem", cell, m, seed=args.seed, wall_s=wall_s, rounds=rounds + 1
                ),
            )
    if args.with_pooled_patchcore:
        # One PatchCore fitted on both sites' training images pooled, scored on each site's test.
        cfg = DetectorConfig(seed=args.seed)
        t0 = time.perf_counter()
        splits = {cell: scan(root) for cell, root in sites.items()}
        pooled_det = PatchCoreDetector(cfg).fit([s for sp in splits.values() for s in sp.train])
        fit_s = time.perf_counter() - t0
        for cell, split in splits.items():
            emit(
                rows,
                detector_row(
                    "pooled_patchcore",
                    cell,
                    pooled_det.evaluate(split.test),
                    seed=args.seed,
                    wall_s=fit_s,
                ),
            )
    if args.with_patchcore:
        cfg = DetectorConfig(seed=args.seed)
        for cell, root in sites.items():
            t0 = time.perf_counter()
            split = scan(root)
            m = PatchCoreDetector(cfg).fit(split.train).evaluate(split.test)
            wall_s = time.perf_counter() - t0
            emit(rows, detector_row("local_patchcore", cell, m, seed=args.seed, wall_s=wall_s))
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
    from feddymem.detect.backbones import build_lite_classifier

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


def memory_sweep(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Round-0 FedDyMem memories of ELPV mono and poly under several reduce / size settings."""
    import dataclasses

    from feddymem.data import iter_batches
    from feddymem.method.aggregate import aggregate_memories
    from feddymem.method.client import FedDyMemClient
    from feddymem.method.reduce import REDUCERS, ReducedMemory

    base = FedDyMemConfig(seed=args.seed)
    clients: dict[str, FedDyMemClient] = {}
    test_z: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for cell in ("mono", "poly"):
        root = args.data_dir / f"elpv-{cell}"
        export_elpv(root, cell_type=cell, seed=args.seed)
        split = scan(root)
        client = FedDyMemClient(
            train=split.train,
            test=split.test,
            config=base,
            state_dir=args.out / "memory" / cell,
            feature_cache=args.feature_cache,
        )
        clients[cell] = client
        zs, labels = [], []
        with torch.inference_mode():
            for batch in iter_batches(
                client.test, size=client.image_hw, batch_size=base.batch_size, with_masks=False
            ):
                zs.append(client._embed(client.detector.extractor(batch.images)))
                labels.append(batch.labels)
        test_z[cell] = (torch.cat(zs), torch.cat(labels))

    def score(cell: str, memory: torch.Tensor) -> dict[str, float]:
        """Image AUROC / F1-max of `cell`'s test set against `memory`: the detector's own k-NN
        and image-score steps, on the test features embedded once."""
        z, labels = test_z[cell]
        det = clients[cell].detector
        det.set_memory(memory, image_hw=clients[cell].image_hw)
        image = det.result_from_patch_scores(det.nearest_patch_scores(z)).image_scores
        return {
            "image_auroc": image_auroc(labels.numpy(), image.numpy()),
            "f1_max": f1_max(labels.numpy(), image.numpy()),
        }

    with torch.inference_mode():
        embedded = {
            cell: torch.cat(
                [c._embed(c.features()[i : i + 64]) for i in range(0, c.features().shape[0], 64)]
            )
            for cell, c in clients.items()
        }
    for reduce in args.memory_reduce.split(","):
        for size in (int(v) for v in args.memory_sizes.split(",")):
            t0 = time.perf_counter()
            local: dict[str, ReducedMemory] = {
                cell: REDUCERS[reduce](z, size=size, seed=args.seed) for cell, z in embedded.items()
            }
            reduce_s = time.perf_counter() - t0
            for cell, mem in local.items():  # each site's own reduced memory: no federation
                emit(
                    rows,
                    {
                        "method": f"round0_local_{reduce}",
                        "dataset": f"elpv/{cell}",
                        "clients": 1,
                        "seed": args.seed,
                        "client_memory": size,
                        "global_memory": None,
                        **score(cell, mem.vectors),
                        "wall_s": round(reduce_s, 1),
                    },
                )
            for factor in (int(v) for v in args.global_factors.split(",")):
                t0 = time.perf_counter()
                cfg = dataclasses.replace(base, client_memory_size=size)
                merged = aggregate_memories(
                    list(local.values()),
                    num_centers=size * factor,
                    seed=cfg.seed,
                    iterations=cfg.kmeans_iterations,
                )
                agg_s = time.perf_counter() - t0
                for cell in clients:
                    emit(
                        rows,
                        {
                            "method": f"round0_federated_{reduce}",
                            "dataset": f"elpv/{cell}",
                            "clients": 2,
                            "seed": args.seed,
                            "client_memory": size,
                            "global_memory": int(merged.shape[0]),
                            **score(cell, merged),
                            "wall_s": round(reduce_s + agg_s, 1),
                        },
                    )


def loss_step(args: argparse.Namespace, *, repeats: int = 3) -> dict[str, Any]:
    """The metric loss's training step, as it is and over the full distance matrix."""
    from feddymem.data import iter_batches
    from feddymem.detect.knn import NearestNeighbors
    from feddymem.method.losses import MetricLoss

    root = args.data_dir / "elpv-mono"
    export_elpv(root, cell_type="mono", seed=args.seed)
    extractor = PatchFeatureExtractor()
    cells = list(scan(root).train)[:24]
    feats = torch.cat(
        [
            extractor(b.images)
            for b in iter_batches(cells, size=(256, 256), batch_size=8, with_masks=False)
        ]
    )
    vectors = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    per_cell = feats.shape[2] * feats.shape[3]
    batch, memory = vectors[: 8 * per_cell].contiguous(), vectors[8 * per_cell :].contiguous()
    loss = MetricLoss()

    def full_matrix(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(z, m).pow(2)  # the loss before: every distance differentiable
        nearest = torch.topk(sq, loss.k + loss.j, dim=1, largest=False).values
        return loss.of_nearest(nearest)[0]

    def step(fn: Any, z0: torch.Tensor, m: torch.Tensor) -> tuple[float, torch.Tensor, float]:
        z = z0.clone().requires_grad_()
        t0 = time.perf_counter()
        value = fn(z, m)
        value.backward()
        assert z.grad is not None
        return float(value.detach()), z.grad, time.perf_counter() - t0

    t_index = time.perf_counter()
    index = NearestNeighbors(memory)
    index_s = time.perf_counter() - t_index
    variants = {
        "knn_index": lambda z, m: loss(z, m, index=index)[0],
        "full_cdist": full_matrix,
    }
    ref_value, ref_grad, _ = step(full_matrix, batch.double(), memory.double())
    out: dict[str, Any] = {
        "batch_vectors": int(batch.shape[0]),
        "memory_items": int(memory.shape[0]),
        "dims": int(batch.shape[1]),
        "index_build_s": round(index_s, 3),
        "float64_loss": ref_value,
    }
    for name, fn in variants.items():
        times = []
        for _ in range(repeats):
            value, grad, took = step(fn, batch, memory)
            times.append(took)
        out[f"{name}_step_s"] = round(sorted(times)[len(times) // 2], 3)
        out[f"{name}_loss"] = value
        gap = (grad.double() - ref_grad).abs().max() / ref_grad.abs().max()
        out[f"{name}_grad_max_rel_error"] = float(f"{float(gap):.3g}")
    out["speedup"] = round(out["full_cdist_step_s"] / out["knn_index_step_s"], 1)
    print(json.dumps(out), flush=True)
    (args.out / "loss_step.json").write_text(json.dumps(out, indent=2))
    return out


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
        "--with-pooled-patchcore",
        action="store_true",
        help="also fit one PatchCore on both sites' pooled training images",
    )
    parser.add_argument(
        "--with-patchcore",
        action="store_true",
        help="also fit local-only PatchCore detectors (benchmarks/detector.py has them too)",
    )
    parser.add_argument(
        "--feature-cache",
        type=Path,
        default=None,
        help="shared feature cache folder (default: <out>/feature-cache)",
    )
    parser.add_argument("--memory-reduce", default="coreset,kmeans", help="memory: reducers")
    parser.add_argument("--memory-sizes", default="2048,4096,8192", help="memory: client sizes")
    parser.add_argument(
        "--global-factors",
        default="1,2",
        help="memory: global memory sizes as multiples of the client size",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as the feddymem command does
    if args.feature_cache is None:
        args.feature_cache = args.out / "feature-cache"
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
    if "memory" in parts:
        memory_sweep(args, rows)
    if "loss" in parts:
        loss_step(args)
    with (args.out / "federation.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
