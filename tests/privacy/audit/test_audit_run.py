"""A tiny end-to-end audit run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import make_texture_tree
from tests.privacy.audit.conftest import CONFIG

from feddymem.privacy.audit import (
    format_defence_table,
    format_identification_table,
    format_membership_table,
    format_table,
    run_audit,
)


def test_run_audit_writes_the_summary_grid_and_plot(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    make_texture_tree(tmp_path / "tree", n_train=24, n_good=4, n_bad=4, size=64)
    out = tmp_path / "out"
    report = run_audit(write_config(CONFIG + "[fed_padim]\neps = 0.01\nnoise = [0, 2]\n"), out)
    for name in ("audit.json", "grid.png", "auroc_vs_psnr.png", "auroc_vs_membership.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    saved = json.loads((out / "audit.json").read_text())
    assert [s["name"] for s in saved["settings"]] == ["a_full", "b_pa", "c_noise"]
    a, b, c = report["settings"]
    assert a["memory_items"] == 8 * 64  # the full bank, in (image, position) order
    assert a["whole_image"]["images"] == 8  # so whole images are tiled back and scored
    assert b["whole_image"]["images"] == 1  # a position-indexed memory is one image
    for s in (a, b, c):
        att = s["attack"]
        assert att["delta_psnr"] == pytest.approx(att["psnr"] - att["twin_psnr"])
    assert b["memory_items"] == 64 and b["attack_items"] == 24  # 8 x 8 grid positions
    assert "oracle_decoder" in b["attacks"]  # G_k trained one round: the oracle attacker runs
    assert not b["guarantee"]["formal"]
    assert c["guarantee"]["formal"] and c["guarantee"]["releases"] == 1
    assert c["guarantee"]["epsilon"] > 0 and c["dp_clip_norm"] > 0
    for s in report["settings"]:
        assert 0.0 <= s["image_auroc"] <= 1.0
        assert np.isfinite([s["attack"]["psnr"], s["attack"]["ssim"]]).all()
    assert saved["data"]["victim_images_in_memory"] == 8
    assert saved["baselines"]["mean_public_patch"]["psnr"] > 0
    assert "| (c) c_noise |" in format_table(report)
    # membership inference on every release: the raw bank holds its members' exact vectors
    assert set(a["membership"]) == {"M_k round 1", "M_g after round 0", "M_g after round 1"}
    assert a["membership"]["M_k round 1"]["distance"]["auc"] > 0.9
    assert a["membership"]["M_k round 1"]["calibrated"]["n_nonmembers"] == 6
    assert a["whole_image"]["identify"]["identification"] >= 0.0
    base = report["baselines"]["membership_public_raw_bank"]["distance"]["auc"]
    assert base < a["membership"]["M_k round 1"]["distance"]["auc"]
    assert "raw bank of public images" in format_membership_table(report)
    assert "mean public image" in format_identification_table(report)
    assert "| (a) a_full |" in format_defence_table(report, reference="b_pa")
    # fed-padim's statistics, attacked the same way: a Gaussian per position from 8 images
    fed, noisy = saved["fed_padim"]  # one row per moment-noise level
    assert (fed["moment_noise"], noisy["moment_noise"]) == (0, 2)
    assert 0.0 <= fed["image_auroc"] <= 1.0 and 0.0 <= noisy["image_auroc"] <= 1.0
    (release,) = fed["membership"].values()
    assert release["items"] == 64 and release["distance"]["n_nonmembers"] == 6
    assert release["distance"]["auc"] > base
    assert "fed-padim statistics" in format_defence_table(report, reference="b_pa")
    assert "fed-padim (positions)" in format_membership_table(report)
    assert "fed-padim, moment noise 2 statistics" in format_defence_table(report, reference="b_pa")


def test_the_public_vote_is_audited_with_the_attacker_rebuilding_its_codebook(
    tmp_path: Path, write_config: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    make_texture_tree(tmp_path / "tree", n_train=24, n_good=4, n_bad=4, size=64)
    head = CONFIG[: CONFIG.index('[[settings]]\nname = "b_pa"')]  # with the raw bank a_full
    settings = """
[[settings]]
name = "d_vote"
group = "d"
memory_reduce = "coreset"
public_vote = true
vote_cells = 4
vote_noise = 2.0
dynamic_memory = false
"""
    from feddymem.cli import main

    assert (
        main(
            [
                "audit",
                "--config",
                str(write_config(head + settings)),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    # the command prints each setting's cost and strongest attack before the file it wrote
    printed = capsys.readouterr().out
    assert "| (d) d_vote |" in printed and "TPR@1% <=" in printed and "wrote " in printed
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    full, vote = report["settings"]
    # the vote's upload is made of the audit's public images' vectors: members sit no nearer
    # to it than to a public bank, while the raw bank gives them away
    leak = full["membership"]["M_k round 1"]["distance"]["auc"]
    vote_auc = vote["membership"]["M_k round 1"]["distance"]["auc"]
    assert leak > 0.9 and vote_auc < leak
    assert vote["n_images_uploaded"] == 10  # the public images', not the site's 8
    g = vote["guarantee"]
    assert g["formal"] and g["releases"] == 1 and g["sensitivity"] == 1.0 and g["epsilon"] > 0
    assert 0.01 < g["tpr_bound_at_1%"] < 1.0 and 0.5 < g["auc_bound"] < 1.0
    assert "TPR@1% <=" in format_defence_table(report, reference="a_full")
    assert 0.0 <= vote["image_auroc"] <= 1.0


def test_an_upload_built_once_is_attacked_through_the_g_k_that_built_it(tmp_path: Path) -> None:
    import torch

    from feddymem.config import FedDyMemConfig
    from feddymem.data import scan
    from feddymem.method.client import FedDyMemClient
    from feddymem.privacy.audit.releases import Release
    from feddymem.privacy.audit.setting import run_client

    split = scan(make_texture_tree(tmp_path / "tree", n_train=12, size=64))
    config = FedDyMemConfig(
        image_size=64, batch_size=4, client_memory_size=32, kmeans_iterations=3,
        train_batch_size=4, dynamic_memory=False,
    )  # fmt: skip
    client = FedDyMemClient(
        train=split.train, test=split.test, config=config, state_dir=tmp_path / "s"
    )
    assert client.generator is not None
    initial = {k: v.clone() for k, v in client.generator.state_dict().items()}
    released: list[Release] = []
    run_client(client, rounds=2, released=released)
    trained = client.generator.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)  # G_k did train
    for release in released:  # but every release is round 0's upload, made by round 0's G_k
        assert release.upload_round == 0 and release.generator is not None
        state = release.generator.state_dict()
        assert all(torch.equal(initial[k], state[k]) for k in initial)
