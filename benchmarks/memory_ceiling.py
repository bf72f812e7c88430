"""The most any shared memory can give a site, against the pooled Gaussian (fed-padim).

On one mixture of the comparison table (a federation spec written by `feddymem data mixture`)
every client's training normals are pooled, as if the server held every patch vector of every
site: no coreset, no k-means, no generator, no wire. Each client's test split is then scored by
its nearest item in that bank (PatchCore's patch score), which bounds what FedDyMem's global
memory M_g can reach with the same features; by the same with each vector tagged with its
grid position (the nearest item is pulled to the patch's own place, which PaDiM's per-position
Gaussians have and a memory has not); and by PaDiM on the pooled images (what fed-padim's
summed statistics give exactly). Image AUROC per client and the mean. The same features,
anomaly maps and image score as the table (`[model]` of `feddymem bench --preset full`).

    .venv/bin/python benchmarks/memory_ceiling.py --spec runs/bench-full3/data/surface/federation.toml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from feddymem.bench.methods import client_data
from feddymem.config import DetectorConfig
from feddymem.data.loader import iter_batches
from feddymem.data.sizing import resolve_size
from feddymem.detect.anomaly_map import to_anomaly_maps
from feddymem.detect.detector import PatchCoreDetector
from feddymem.detect.gaussian import GaussianConfig, estimate_gaussian, mahalanobis
from feddymem.detect.knn import NearestNeighbors

# Position tags, as multiples of the bank's median nearest-neighbour distance: fixed before
# any run, from "a cell's move costs nothing" to "the nearest item sits at the same place".
POSITION_WEIGHTS = (1.0, 4.0, 16.0, 64.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="a mixture's federation.toml")
    parser.add_argument("--image-size", type=int, default=160, help="as the bench's [model]")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if not args.spec.is_file():
        print(f"error: --spec {args.spec}: no such file", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists():
        print(f"error: --out {args.out}: exists; choose a new file", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    start = time.perf_counter()
    clients = client_data(args.spec)
    config = DetectorConfig(image_size=args.image_size)
    pooled = [s for c in clients for s in c.train]
    hw = resolve_size([s.path for s in pooled], image_size=config.image_size, keep_aspect=True)
    detector = PatchCoreDetector(config)
    detector.image_hw_ = hw  # only its feature extractor and image score are used

    def features(samples: list) -> torch.Tensor:
        return torch.cat(
            [
                detector.features(b.images)
                for b in iter_batches(samples, size=hw, batch_size=16, with_masks=False)
            ]
        )

    train = [features(list(c.train)) for c in clients]
    tests = [(features(list(c.test)), np.array([s.label != 0 for s in c.test])) for c in clients]
    d, h, w = train[0].shape[1:]
    grid = torch.stack(
        torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij"), -1
    ).reshape(-1, 2)

    def rows(f: torch.Tensor, weight: float = 0.0) -> torch.Tensor:
        flat = f.permute(0, 2, 3, 1).reshape(-1, d)
        if weight == 0.0:
            return flat
        return torch.cat([flat, weight * grid.repeat(f.shape[0], 1)], dim=1)

    def image_scores(patch: torch.Tensor) -> np.ndarray:
        maps = to_anomaly_maps(patch, image_hw=hw, sigma=config.blur_sigma)
        return detector._image_scores(patch, maps).numpy()

    bank = rows(torch.cat(train))
    sample = bank[torch.randperm(len(bank))[:4000]]
    median_nn = float(NearestNeighbors(sample).search(sample, 2)[0][:, 1].median())
    table: dict[str, list[float]] = {}

    def knn_row(name: str, weight: float) -> None:
        index = NearestNeighbors(rows(torch.cat(train), weight))
        table[name] = []
        for f, labels in tests:
            dist = index.search(rows(f, weight), 1)[0][:, 0]
            table[name].append(roc_auc_score(labels, image_scores(dist.reshape(-1, h, w))))

    knn_row("pooled bank, nearest item", 0.0)
    for weight in POSITION_WEIGHTS:
        knn_row(f"pooled bank + position x{weight:g} median NN", weight * median_nn)
    mean, precision = estimate_gaussian(torch.cat(train), eps=GaussianConfig.eps)
    table["pooled PaDiM (fed-padim)"] = [
        roc_auc_score(labels, image_scores(mahalanobis(f, mean, precision))) for f, labels in tests
    ]
    names = [c.name for c in clients]
    print(f"{args.spec.parent.name}: {len(pooled)} training normals, input {hw}, grid {h}x{w}")
    print("| row | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for name, aucs in table.items():
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in aucs) + f" | {np.mean(aucs):.3f} |")
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.out is not None:
        args.out.write_text(json.dumps({"spec": str(args.spec), "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
