"""What fed-padim's pooled statistics give away when more sites share them.

With secure aggregation the server would see only the sum of every site's moments, and a site
always receives that sum (it is the model). A site that subtracts its own moments holds the sum
of the other sites'. This measures membership inference on such a sum: the victim's 90
training cells (members) pooled with the moments of 0, 90, 180 or 270 cells of third parties
(one to four further sites of the victim's size), against 90 cells that were in no sum
(non-members), all distinct normal ELPV mono cells. The attack is the audit's distance attack
on fed-padim (`privacy.audit.gaussian`: the mean of each candidate's lowest tenth of
Mahalanobis log-distances at 64 seeded grid positions; AUC and TPR at 1 % FPR), with and
without moment noise as a site adds it. The calibrated attack is not run: its shadow sums would
need more public cells than the set holds, so the figures are what the weaker attack finds.

    .venv/bin/python benchmarks/pooled_membership.py --data data/elpv-mono
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from feddymem.config import DetectorConfig
from feddymem.data import scan
from feddymem.data.loader import iter_batches
from feddymem.detect.detector import PatchCoreDetector
from feddymem.detect.gaussian import GaussianConfig
from feddymem.privacy.audit.gaussian import at_positions, gaussian_statistic, released_gaussians
from feddymem.privacy.audit.membership import attack_summaries, query_positions

SITE = 90  # cells per site, as in the audit
THIRD_PARTIES = (0, 1, 2, 3, 4)  # further sites of SITE cells in the sum
NOISE = (0.0, 2.0)  # moment noise: none, and the nearest setting to the goal so far


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ELPV mono in MVTec layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224, help="as the audit's [model]")
    args = parser.parse_args(argv)
    try:
        split = scan(args.data)
    except Exception as err:  # a missing or malformed folder: one line, exit 2
        print(f"error: --data {args.data}: {err}", file=sys.stderr)
        return 2
    normals = sorted(
        [s for s in (*split.train, *split.test) if s.label == 0], key=lambda s: str(s.path)
    )
    need = SITE * (2 + max(THIRD_PARTIES))
    if len(normals) < need:
        print(
            f"error: --data {args.data}: {len(normals)} normal cells, {need} needed",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    order = np.random.default_rng(args.seed).permutation(len(normals))[:need]
    detector = PatchCoreDetector(DetectorConfig(image_size=args.image_size))
    size = (args.image_size, args.image_size)
    chosen = [normals[int(i)] for i in order]
    z = torch.cat(
        [
            detector.features(b.images)
            for b in iter_batches(chosen, size=size, batch_size=16, with_masks=False)
        ]
    )
    members, nonmembers, others = z[:SITE], z[SITE : 2 * SITE], z[2 * SITE :]
    positions = query_positions(z.shape[2] * z.shape[3], 64, seed=args.seed + 17)
    candidates = at_positions(torch.cat([members, nonmembers]), positions)
    rows = []
    for noise in NOISE:
        for k in THIRD_PARTIES:
            pooled = torch.cat([members, others[: k * SITE]])
            mean, precision = released_gaussians(
                pooled, positions, eps=GaussianConfig.eps, noise=noise, seed=args.seed
            )
            stat = gaussian_statistic(candidates, mean, precision)
            result = attack_summaries(stat, [], n_members=SITE)["distance"]
            row = {
                "moment_noise": noise,
                "other_sites": k,
                "cells_in_sum": SITE * (1 + k),
                "auc": round(result["auc"], 3),
                "tpr_at_1%": round(result["tpr_at_1%"], 3),
                "tpr_at_0.1%": round(result["tpr_at_0.1%"], 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
