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
from feddymem.privacy.audit.figures import save_grid, save_membership_plot, save_plot
from feddymem.privacy.audit.gaussian import audit_fed_padim
from feddymem.privacy.audit.membership import query_positions
from feddymem.privacy.audit.releases import MembershipData, Release, release_membership
from feddymem.privacy.audit.scores import (
    attack_summary,
    identification,
    psnr,
    score_reconstructions,
)
from feddymem.privacy.audit.setting import SettingResult, audit_setting

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


def _membership_data(
    config: AuditConfig, public: PatchSet, victim: PatchSet, reference: PatchSet
) -> MembershipData:
    """Members: the images the memory is built from; non-members: the held-out reference
    images of the same kind; shadows from the attacker's public images."""
    h, w = public.features.shape[2:]
    spec = config.attack
    return MembershipData(
        members=victim.features,
        nonmembers=reference.features,
        public=public.features,
        positions=query_positions(h * w, spec.membership_positions, seed=config.run.seed + 17),
        shadows=spec.shadows,
        seed=config.run.seed,
        image_pool=torch.cat([victim.images, reference.images]),
    )


def _know_nothing(
    config: AuditConfig, membership: MembershipData, public: PatchSet, victim: PatchSet
) -> dict[str, Any]:
    """What attacks score on uploads that know nothing of the victim: membership inference on
    a raw bank of public images (should be about 0.5), and whole-image identification by the
    mean public image and by a random public image (chance)."""
    base = from_dict(FedDyMemConfig, dict(config.model), where="[model]")
    raw = dataclasses.replace(
        base, generator=False, memory_reduce="none", client_memory_size=10**9, dp_clip_norm=None
    )
    n = membership.members.shape[0]
    bank = public.features[:n].permute(0, 2, 3, 1).reshape(-1, public.features.shape[1])
    mia = release_membership([Release("public raw bank", bank, None, 0)], raw, membership)
    k = min(config.attack.whole_images, victim.images.shape[0])
    truth = victim.images[:k]
    gen = torch.Generator().manual_seed(config.run.seed + 19)
    random_pick = public.images[torch.randint(0, public.images.shape[0], (k,), generator=gen)]
    mean_image = public.images.mean(dim=0, keepdim=True).expand_as(truth)
    pool = membership.image_pool
    return {
        "membership_public_raw_bank": mia["public raw bank"],
        "whole_image_mean_public": identification(mean_image, truth, pool),
        "whole_image_random_public": identification(random_pick, truth, pool),
    }


def _audit_settings(
    config: AuditConfig,
    data: AuditData,
    *,
    attacker: Attacker,
    public: PatchSet,
    reference: PatchSet,
    membership: MembershipData,
    probe: FedDyMemClient,
    baselines: dict[str, Any],
    work: Path,
    out: Path,
) -> list[SettingResult]:
    """Every setting of the audit in turn (clip norms resolved from the public features),
    the summaries so far written to `<out>/audit.partial.json` after each."""
    grid_hw = (int(public.features.shape[2]), int(public.features.shape[3]))
    settings = _resolve_clip(config.settings, public.flat_features.norm(dim=1))
    twin_features = reference.features[: len(probe.train_samples)]
    results = []
    for s in settings:
        result = audit_setting(
            s,
            config=config,
            data=data,
            attacker=attacker,
            twin_features=twin_features,
            work=work,
            grid_hw=grid_hw,
            extractor=probe.detector.extractor,
            membership=membership,
        )
        results.append(result)
        partial = {"baselines": baselines, "settings": [r.summary for r in results]}
        (out / "audit.partial.json").write_text(json.dumps(partial, indent=2, default=str))
    return results


def _save_figures(
    out: Path, results: Sequence[SettingResult], victim: PatchSet, baselines: dict[str, Any]
) -> None:
    """grid.png (the victim's image, its mean image and each upload decoded, with every
    setting's reconstructions) and auroc_vs_psnr.png."""
    whole: list[tuple[str, torch.Tensor]] = [
        ("victim image", victim.images[0]),
        ("victim mean image", victim.images.mean(dim=0)),
    ]
    whole += [
        (f"({r.group}) {r.name}\nupload decoded", r.tiled) for r in results if r.tiled is not None
    ]
    save_grid(out / "grid.png", results, whole=whole)
    save_plot(out / "auroc_vs_psnr.png", [r.summary for r in results], baselines)


def _report(
    config: AuditConfig,
    data: AuditData,
    *,
    probe: FedDyMemClient,
    attacker: Attacker,
    public: PatchSet,
    baselines: dict[str, Any],
    results: Sequence[SettingResult],
    fed_padim: list[dict[str, Any]] | None,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The JSON summary of the audit (audit.json); `fed_padim` is fed-padim's rows (one per
    moment-noise level), if audited."""
    return {
        "name": config.run.name,
        "image_hw": list(probe.image_hw),
        "grid_hw": [int(public.features.shape[2]), int(public.features.shape[3])],
        "data": {
            "victim_root": str(config.data.victim),
            "public_root": str(config.data.public),
            "victim_images_in_memory": len(probe.train_samples),
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
        "settings": [r.summary for r in results],
        "fed_padim": fed_padim,
        "timing": timing,
        "config": config.as_dict(),
        "files": {
            "grid": "grid.png",
            "plot": "auroc_vs_psnr.png",
            "membership_plot": "auroc_vs_membership.png",
        },
    }


def run_audit(config_path: Path, out_dir: Path) -> dict[str, Any]:
    """Run the audit of `config_path`; write audit.json, grid.png, auroc_vs_psnr.png and
    auroc_vs_membership.png to `out_dir`.

    Returns the JSON summary (also written to `<out>/audit.json`).
    """
    t_start = time.perf_counter()
    config = load_audit_config(Path(config_path))
    out = Path(out_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = select_data(config.data, seed=config.run.seed)
    log.info(
        "audit %s: %d victim, %d reference, %d public, %d test images",
        config.run.name,
        len(data.victim),
        len(data.reference),
        len(data.public),
        len(data.test),
    )
    probe, (public, victim, reference), features_s = _patch_sets(config, data, work)
    attacker = Attacker(config=config, public=public, victim=victim)

    baselines = _baselines(attacker, public, reference, config=config)
    membership = _membership_data(config, public, victim, reference)
    baselines.update(_know_nothing(config, membership, public, victim))

    results = _audit_settings(
        config,
        data,
        attacker=attacker,
        public=public,
        reference=reference,
        membership=membership,
        probe=probe,
        baselines=baselines,
        work=work,
        out=out,
    )
    fed_padim = None
    if config.fed_padim is not None:
        log.info("fed-padim: the statistics a site sends")
        fed_padim = audit_fed_padim(config, data, membership)
    _save_figures(out, results, victim, baselines)
    save_membership_plot(
        out / "auroc_vs_membership.png",
        [r.summary for r in results],
        baselines=baselines,
        fed_padim=fed_padim,
    )
    report = _report(
        config,
        data,
        probe=probe,
        attacker=attacker,
        public=public,
        baselines=baselines,
        results=results,
        fed_padim=fed_padim,
        timing={"features_s": features_s, "total_s": time.perf_counter() - t_start},
    )
    (out / "audit.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "audit.partial.json").unlink(missing_ok=True)  # per-setting progress, now whole
    log.info("audit written to %s in %.0f s", out, report["timing"]["total_s"])
    return report
