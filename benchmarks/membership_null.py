"""What the audit's membership measures score on a release that reveals nothing.

`feddymem audit` reports, per release and attack, the AUC and the TPR at 1 % FPR of members (the
site's training cells, 90 on ELPV) against non-members (100 held-out cells). With so few
candidates both measures are noisy: an attack whose scores are independent of membership still
lands above a fixed target some of the time, and the audit reports the worst of two attacks
over three releases. This draws that null (exchangeable scores, the audit's own
`tpr_at_fpr` and scikit-learn's AUC) and prints how often it exceeds a target, for one
attack-release and for the worst of several, so an audited figure can be read against what
chance alone gives.

    .venv/bin/python benchmarks/membership_null.py --members 90 --nonmembers 100
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from feddymem.privacy.audit.membership import tpr_at_fpr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=90)
    parser.add_argument("--nonmembers", type=int, default=100)
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--tpr-target", type=float, default=0.02, help="at 1 %% FPR")
    parser.add_argument("--auc-target", type=float, default=0.55)
    parser.add_argument("--worst-of", type=int, nargs="+", default=[1, 2, 6])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.members < 1 or args.nonmembers < 1 or args.draws < max(args.worst_of):
        parser.error("--members, --nonmembers >= 1 and --draws >= every --worst-of")

    rng = np.random.default_rng(args.seed)
    labels = np.r_[np.ones(args.members), np.zeros(args.nonmembers)]
    scores = rng.random((args.draws, labels.size))
    tpr = np.array([tpr_at_fpr(labels, s, 0.01) for s in scores])
    auc = np.array([roc_auc_score(labels, s) for s in scores])
    rows = []
    for k in args.worst_of:
        n = args.draws // k * k
        worst_tpr = tpr[:n].reshape(-1, k).max(axis=1)
        worst_auc = auc[:n].reshape(-1, k).max(axis=1)
        rows.append(
            {
                "worst_of": k,
                "p_tpr_above_target": float((worst_tpr > args.tpr_target).mean()),
                "p_auc_above_target": float((worst_auc > args.auc_target).mean()),
                "tpr_95th": float(np.quantile(worst_tpr, 0.95)),
                "auc_95th": float(np.quantile(worst_auc, 0.95)),
            }
        )
        print(
            f"worst of {k}: TPR@1% > {args.tpr_target:.0%} in "
            f"{rows[-1]['p_tpr_above_target']:.1%} of draws (95th {rows[-1]['tpr_95th']:.1%}), "
            f"AUC > {args.auc_target} in {rows[-1]['p_auc_above_target']:.1%} "
            f"(95th {rows[-1]['auc_95th']:.3f})"
        )
    print(
        json.dumps(
            {
                "members": args.members,
                "nonmembers": args.nonmembers,
                "draws": args.draws,
                "auc_sd": float(auc.std()),
                "tpr_mean": float(tpr.mean()),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
