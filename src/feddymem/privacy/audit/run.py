"""The whole audit: data, features, baselines, every setting, figures and audit.json."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from feddymem.config import FedDyMemConfig, from_dict
from feddymem.method.client import FedDyMemClient
from feddymem.privacy.audit.attack import Attacker, sample_items
from feddymem.privacy.audit.config import AuditConfig, SettingSpec, load_audit_config
from feddymem.privacy.audit.data import AuditData, PatchSet, load_patch_set, select_data
from feddymem.privacy.audit.figures import save_grid, save_plot
from feddymem.privacy.audit.scores import attack_summary, psnr, score_reconstructions
from feddymem.privacy.audit.setting import audit_setting

log = logging.getLogger(__name__)


def _resolve_clip(settings: Sequence[SettingSpec], norms: torch.Tensor) -> list[SettingSpec]:
    out = []
    for s in settings:
        if s.clip_quantile is None:
            out.append(s)
            continue
        clip = float(torch.quantile(norms, s.clip_quantile))
        out.append(dataclasses.replace(s, model=dataclasses.replace(s.model, dp_clip_norm=clip)))
    return out


def _baselines(
    attacker: Attacker, public: PatchSet, reference: PatchSet, *, config: AuditConfig
) -> dict[str, Any]:
    """What "no information about these images" (the mean public patch) and "a plausible
    patch" (decoded features of reference images) score against the victim's patches."""
    patch = config.attack.patch_size
    mean_patch = (public.flat_patches.float().mean(dim=0) / 255.0).view(1, 3, patch, patch)
    ref_items = sample_items(
        reference.flat_features.shape[0], config.attack.items, seed=config.run.seed + 13
    )
    ref_recon, pub_v = attacker.score(attacker.decoder, reference.flat_features[ref_items])
    fidelity = psnr(
        ref_recon, reference.flat_patches[ref_items].float().div(255.0).view_as(ref_recon)
    )
    return {
        "mean_public_patch": attack_summary(
            score_reconstructions(mean_patch, attacker.victim_truth), None
        ),
        "public_decoded": attack_summary(pub_v, None),
        "decoder_fidelity_psnr": float(fidelity.mean()),
    }


def _patch_sets(
    config: AuditConfig, data: AuditData, work: Path
) -> tuple[FedDyMemClient, tuple[PatchSet, PatchSet, PatchSet], float]:
    """A probe client (the client's own split: the images its memory is built from are the
    attack's truth) and the patch sets of the public, in-memory and reference images, with the
    seconds their features took."""
    base = from_dict(FedDyMemConfig, dict(config.model), where="[model]")
    probe = FedDyMemClient(
        train=data.victim, test=data.test, config=base, state_dir=work / "state" / "_probe"
    )
    t0 = time.perf_counter()
    sets = tuple(
        load_patch_set(
            samples,
            extractor=probe.detector.extractor,
            image_hw=probe.image_hw,
            patch_size=config.attack.patch_size,
        )
        for samples in (data.public, probe.train_samples, data.reference)
    )
    return probe, (sets[0], sets[1], sets[2]), time.perf_counter() - t0


def run_audit(config_path: Path, out_dir: Path) -> dict[str, Any]:
    """Run the audit of `config_path`; write audit.json, grid.png, auroc_vs_psnr.png to `out_dir`.

    Returns the JSON summary (also written to `<out>/audit.json`).
    """
    t_start = time.perf_counter()
    config = load_audit_config(Path(config_path))
    out = Path(out_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    seed = config.run.seed
    data = select_data(config.data, seed=seed)
    log.info(
        "audit %s: %d victim, %d reference, %d public, %d test images",
        config.run.name,
        len(data.victim),
        len(data.reference),
        len(data.public),
        len(data.test),
    )
    probe, (public, victim, reference), features_s = _patch_sets(config, data, work)
    image_hw = probe.image_hw
    extractor = probe.detector.extractor
    in_memory = probe.train_samples
    grid_hw = (int(public.features.shape[2]), int(public.features.shape[3]))
    attacker = Attacker(config=config, public=public, victim=victim)

    baselines = _baselines(attacker, public, reference, config=config)

    settings = _resolve_clip(config.settings, public.flat_features.norm(dim=1))
    twin_features = reference.features[: len(in_memory)]
    results = [
        audit_setting(
            s,
            config=config,
            data=data,
            attacker=attacker,
            twin_features=twin_features,
            work=work,
            grid_hw=grid_hw,
            extractor=extractor,
        )
        for s in settings
    ]

    whole: list[tuple[str, torch.Tensor]] = [
        ("victim image", victim.images[0]),
        ("victim mean image", victim.images.mean(dim=0)),
    ]
    whole += [
        (f"({r.group}) {r.name}\nupload decoded", r.tiled) for r in results if r.tiled is not None
    ]
    save_grid(out / "grid.png", results, whole=whole)
    summaries = [r.summary for r in results]
    save_plot(out / "auroc_vs_psnr.png", summaries, baselines)

    report: dict[str, Any] = {
        "name": config.run.name,
        "image_hw": list(image_hw),
        "grid_hw": list(grid_hw),
        "data": {
            "victim_root": str(config.data.victim),
            "public_root": str(config.data.public),
            "victim_images_in_memory": len(in_memory),
            "victim_images_calibration": len(probe.calibration),
            "public_images": len(data.public),
            "reference_images": len(data.reference),
            "test_images": len(data.test),
            "test_anomalous": sum(s.label for s in data.test),
        },
        "decoder": {
            "train_loss": attacker.train_loss,
            "train_s": attacker.train_s,
            "pairs": int(attacker.public_x.shape[0]),
        },
        "baselines": baselines,
        "settings": summaries,
        "timing": {"features_s": features_s, "total_s": time.perf_counter() - t_start},
        "config": config.as_dict(),
        "files": {"grid": "grid.png", "plot": "auroc_vs_psnr.png"},
    }
    (out / "audit.json").write_text(json.dumps(report, indent=2, default=str))
    log.info("audit written to %s in %.0f s", out, report["timing"]["total_s"])
    return report
