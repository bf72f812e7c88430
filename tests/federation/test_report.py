"""The plain-text summary of results.json."""

from __future__ import annotations

from pathlib import Path

from fakes import DIM, Faults, Federation

from feddymem.federation.report import format_results


def test_summary_lists_clients_mean_bytes_and_drops(federation: Federation, tmp_path: Path) -> None:
    Faults.plan = {"gamma": (1, "nan")}
    results, _ = federation.run(tmp_path / "out")
    results["clients"]["beta"].update(calibration_folds=3.0, calibration_normals=120.0)
    text = format_results(results)
    lines = text.splitlines()
    assert lines[0] == "federation test-fed: completed"
    assert any(line.startswith("alpha ") for line in lines)
    mean = next(line for line in lines if line.startswith("mean "))
    assert f"{results['mean']['image_auroc']:.3f}" in mean
    assert "MB up/rnd" in text and f"global memory M_g: 5 x {DIM}" in text
    # bytes per training round: the mean over alpha's rounds, in MB with two decimals
    rounds = results["bytes"]["per_client_per_round"]["alpha"]
    up = sum(r["up"] for r in rounds.values()) / len(rounds) / 1e6
    alpha = next(line for line in lines if line.startswith("alpha "))
    assert alpha.split()[-2] == f"{up:.2f}"
    assert "whole run, all clients" in text
    # how well each site's false-alarm rate is known, and what its threshold rests on
    assert (
        "alpha: FAR@thr 0.020, exact 95% interval 0.000-0.107 over 50 test normals; threshold "
        "set on 12 held-out normals" in text
    )
    assert "threshold set on 120 normals, 3-fold cross-fit" in text
    # where each evaluated client's model went
    for name, client in results["clients"].items():
        if client.get("model_file"):
            assert f"model of {name}: {client['model_file']}" in text
    assert "dropped gamma (round 1): vectors hold NaN or Inf" in text
