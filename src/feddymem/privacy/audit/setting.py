"""One audit setting: federate a single client, evaluate it, attack its upload and its twin's."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from feddymem.detect.features import PatchFeatureExtractor
from feddymem.method.aggregate import aggregate_memories
from feddymem.method.client import FedDyMemClient, build_upload
from feddymem.method.reduce import ReducedMemory
from feddymem.privacy.audit.attack import Attacker, embed, sample_items
from feddymem.privacy.audit.config import AuditConfig, SettingSpec
from feddymem.privacy.audit.data import AuditData, tile_patches
from feddymem.privacy.audit.decoder import PatchDecoder
from feddymem.privacy.audit.releases import (
    MembershipData,
    Release,
    release_codebook,
    release_membership,
)
from feddymem.privacy.audit.scores import (
    MatchScores,
    attack_summary,
    identification,
    image_match,
)
from feddymem.privacy.dp import auc_bound, privacy_guarantee, tpr_bound

log = logging.getLogger(__name__)


@dataclass
class SettingResult:
    """Everything measured for one setting: `summary` (JSON-ready) and tensors for the figures."""

    name: str
    group: str
    summary: dict[str, Any]
    recon: torch.Tensor  # (grid_items, 3, P, P)
    matched: torch.Tensor  # (grid_items, 3, P, P)
    tiled: torch.Tensor | None  # (3, H_in, W_in) whole-image reconstruction, position-indexed


def run_client(
    client: FedDyMemClient, *, rounds: int, released: list[Release] | None = None
) -> tuple[ReducedMemory, list[dict[str, float]]]:
    """Round 0 and R rounds of a single-client federation; the last upload and round metrics.

    The server step is the real one (aggregate_memories over the one upload), so G_k trains
    against a global memory as it would in a federation of one. `released`, when given,
    receives every M_g the server sends (after round t = 1..R) and, last, the server's M_g
    after round R, each with a copy of the G_k that built the upload it came from: without
    dynamic memory that is round 0's G_k (the upload is built once and re-sent), whatever G_k
    has trained into since, which never leaves the site.
    """
    cfg = client.config
    memory, metrics = client.fit_round(round_idx=0, global_memory=None)
    built_by, built_in = _frozen(client), 0  # the G_k and round of the upload being sent
    history = [metrics]
    for t in range(1, rounds + 2):
        if released is None and t > rounds:
            break
        global_memory = aggregate_memories(
            [memory],
            num_centers=cfg.global_memory_size,
            method=cfg.server_aggregation,
            seed=cfg.seed * 1_000 + t,
            iterations=cfg.kmeans_iterations,
        )
        if released is not None:
            released.append(
                Release(f"M_g after round {t - 1}", global_memory, built_by, built_in, t)
            )
        if t > rounds:
            break
        memory, metrics = client.fit_round(round_idx=t, global_memory=global_memory)
        if cfg.dynamic_memory:
            built_by, built_in = _frozen(client), t
        history.append(metrics)
    return memory, history


def _frozen(client: FedDyMemClient) -> nn.Module | None:
    return None if client.generator is None else copy.deepcopy(client.generator).eval()


def _generator_moved(client: FedDyMemClient) -> bool:
    gen = client.generator
    if gen is None:
        return False
    fresh = type(gen)(
        in_channels=gen.in_channels,
        gamma_d=client.config.gamma_d,
        init=client.config.generator_init,
        seed=client.config.seed,
    )
    return any(
        not torch.equal(a, b)
        for a, b in zip(gen.state_dict().values(), fresh.state_dict().values(), strict=True)
    )


def _new_client(
    setting: SettingSpec,
    *,
    data: AuditData,
    work: Path,
    extractor: PatchFeatureExtractor | None,
) -> FedDyMemClient:
    """A fresh client for `setting` (its state folder emptied), sharing `extractor` when the
    setting asks for the same backbone."""
    cfg = setting.model
    state = work / "state" / setting.name
    if state.exists():
        shutil.rmtree(state)
    shared = (
        extractor if extractor is not None and extractor.matches(cfg.backbone, cfg.layers) else None
    )
    return FedDyMemClient(
        train=data.victim,
        test=data.test,
        config=cfg,
        state_dir=state,
        feature_cache=work / "cache",
        extractor=shared,
        # the public vote's codebook: the public images the attacker holds too
        public=data.public if cfg.public_vote else (),
    )


@dataclass
class _PatchAttack:
    """The stronger decoder's results on a sample of upload items."""

    attacks: dict[str, dict[str, Any]]
    which: str
    decoder: PatchDecoder
    recon: torch.Tensor
    vs_victim: MatchScores
    items: torch.Tensor
    drift: float | None


def _attack_patches(
    client: FedDyMemClient,
    memory: ReducedMemory,
    twin: ReducedMemory,
    *,
    attacker: Attacker,
    config: AuditConfig,
) -> _PatchAttack:
    """Decode a seeded sample of the upload's items (and of the twin upload's) with the
    p-decoder and, for a generator that moved, the oracle decoder; keep the stronger."""
    spec = config.attack
    generator = client.generator
    items = sample_items(memory.vectors.shape[0], spec.items, seed=config.run.seed + 7)
    # Same item indices when the two uploads are the same size: for position-indexed memories
    # and ordered raw banks that pairs items by (image, position), which cancels the large
    # position-to-position spread of PSNR from the difference.
    twin_items = (
        items
        if twin.vectors.shape[0] == memory.vectors.shape[0]
        else sample_items(twin.vectors.shape[0], spec.items, seed=config.run.seed + 8)
    )
    decoders: dict[str, PatchDecoder] = {"p_decoder": attacker.decoder}
    drift = None
    if generator is not None and spec.oracle_steps > 0 and _generator_moved(client):
        decoders["oracle_decoder"], drift = attacker.oracle(generator, seed=config.run.seed + 11)
    attacks: dict[str, dict[str, Any]] = {}
    best: tuple[str, PatchDecoder, torch.Tensor, MatchScores] | None = None
    for which, decoder in decoders.items():
        recon, vs_victim = attacker.score(decoder, memory.vectors[items])
        _, twin_vs_victim = attacker.score(decoder, twin.vectors[twin_items])
        attacks[which] = attack_summary(vs_victim, twin_vs_victim)
        if best is None or attacks[which]["psnr"] > attacks[best[0]]["psnr"]:
            best = (which, decoder, recon, vs_victim)
    assert best is not None
    which, decoder, recon, vs_victim = best
    return _PatchAttack(attacks, which, decoder, recon, vs_victim, items, drift)


def _layouts(
    memory: ReducedMemory,
    twin: ReducedMemory,
    *,
    memory_reduce: str,
    n_img: int,
    hw: int,
    whole_images: int,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Whole images, where the upload keeps the grid layout: a position-indexed memory is one
    image; a full raw bank in (image, position) order (no sampling) is n_k images. Returns the
    (K, H*W, d) layouts of the upload and of the twin, or None."""
    d = memory.vectors.shape[1]
    if memory_reduce == "position_average" and memory.vectors.shape[0] == hw:
        if twin.vectors.shape[0] == hw:
            return memory.vectors.view(1, hw, d), twin.vectors.view(1, hw, d)
    elif memory_reduce == "none" and memory.vectors.shape[0] == n_img * hw:
        n_twin = twin.vectors.shape[0] // hw
        if twin.vectors.shape[0] == n_twin * hw and n_twin >= 1:
            k, k_twin = min(whole_images, n_img), min(whole_images, n_twin)
            return (
                memory.vectors[: k * hw].view(k, hw, d),
                twin.vectors[: k_twin * hw].view(k_twin, hw, d),
            )
    return None


def _summary(
    setting: SettingSpec,
    client: FedDyMemClient,
    memory: ReducedMemory,
    metrics: Any,
    pa: _PatchAttack,
    *,
    whole_image: dict[str, float | None] | None,
    history: list[dict[str, float]],
    config: AuditConfig,
    num_positions: int,
) -> dict[str, Any]:
    """The JSON-ready record of one setting."""
    cfg = setting.model
    guarantee = privacy_guarantee(
        cfg, rounds=config.run.rounds, delta=config.run.delta, num_positions=num_positions
    )
    return {
        "name": setting.name,
        "group": setting.group,
        "memory_reduce": cfg.memory_reduce,
        "generator": cfg.generator,
        "dp_clip_norm": cfg.dp_clip_norm,
        "dp_noise_multiplier": cfg.dp_noise_multiplier,
        "clip_quantile": setting.clip_quantile,
        "memory_items": int(memory.vectors.shape[0]),
        "memory_bytes": int(memory.nbytes),
        "n_images_uploaded": int(memory.n_images),
        "n_images_true": len(client.train_samples),
        "image_auroc": metrics.image_auroc,
        "pixel_auroc": metrics.pixel_auroc,
        "n_test": metrics.n_normal + metrics.n_anomalous,
        "attack_items": int(pa.items.numel()),
        "attack": {"decoder": pa.which, **pa.attacks[pa.which]},
        "attacks": pa.attacks,
        "whole_image": whole_image,
        "generator_drift": pa.drift,
        "guarantee": _guarantee_dict(guarantee),
        "rounds": [{k: float(v) for k, v in m.items()} for m in history],
    }


def audit_setting(
    setting: SettingSpec,
    *,
    config: AuditConfig,
    data: AuditData,
    attacker: Attacker,
    twin_features: torch.Tensor,
    work: Path,
    grid_hw: tuple[int, int],
    extractor: PatchFeatureExtractor | None = None,
    membership: MembershipData | None = None,
) -> SettingResult:
    """Run one setting: federate, evaluate its detector, attack its upload and its twin's.

    `extractor`, when given, is the frozen backbone every setting shares (built once per audit
    instead of once per setting); it is used only if the setting asks for the same backbone.

    The twin upload is what the same setting (the victim's final G_k, the same reduce and
    noise, another noise seed) makes from `twin_features`, the p(x) of as many reference images
    as the victim's memory holds. Its reconstructions scored against the victim's patches are
    the counterfactual "an upload from a similar site": `delta_psnr` = victim - twin.
    """
    t0 = time.perf_counter()
    cfg = setting.model
    client = _new_client(setting, data=data, work=work, extractor=extractor)
    released: list[Release] = []
    memory, history = run_client(client, rounds=config.run.rounds, released=released)
    metrics = client.evaluate(memory.vectors)
    log.info(
        "%s: image AUROC %.4f (%d items)", setting.name, metrics.image_auroc, len(memory.vectors)
    )
    mia = None
    if membership is not None:
        last = config.run.rounds
        # the G_k and round that built the last upload (round 0's without dynamic memory)
        built = released[-1]
        upload = Release(f"M_k round {last}", memory.vectors, built.generator, built.upload_round)
        mia = release_membership([upload, released[0], released[-1]], cfg, membership)
    generator = client.generator.eval() if client.generator is not None else None
    twin_cfg = dataclasses.replace(cfg, seed=cfg.seed + 7_919)
    twin = build_upload(
        embed(generator, twin_features),
        config=twin_cfg,
        round_idx=config.run.rounds,
        public=release_codebook(
            cfg, generator, client.public_features(), upload_round=config.run.rounds
        )
        if cfg.public_vote
        else None,
    )
    pa = _attack_patches(client, memory, twin, attacker=attacker, config=config)

    tiled, image_scores = _whole_images(
        client,
        memory,
        twin,
        pa,
        config=config,
        attacker=attacker,
        grid_hw=grid_hw,
        memory_reduce=cfg.memory_reduce,
        membership=membership,
    )
    h, w = grid_hw
    summary = _summary(
        setting,
        client,
        memory,
        metrics,
        pa,
        whole_image=image_scores,
        history=history,
        config=config,
        num_positions=h * w,
    )
    summary["membership"] = mia
    summary["wall_s"] = time.perf_counter() - t0
    g = config.attack.grid_items
    return SettingResult(
        name=setting.name,
        group=setting.group,
        summary=summary,
        recon=pa.recon[:g],
        matched=pa.vs_victim.matched[:g],
        tiled=tiled,
    )


def _whole_images(
    client: FedDyMemClient,
    memory: ReducedMemory,
    twin: ReducedMemory,
    pa: _PatchAttack,
    *,
    config: AuditConfig,
    attacker: Attacker,
    grid_hw: tuple[int, int],
    memory_reduce: str,
    membership: MembershipData | None,
) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """Whole images decoded from an upload whose items keep the image layout (a raw bank or
    the per-position average): the first victim image's tiles, and their matches and
    identification against the victim's images; (None, None) for an upload without layout."""
    h, w = grid_hw
    layouts = _layouts(
        memory,
        twin,
        memory_reduce=memory_reduce,
        n_img=len(client.train_samples),
        hw=h * w,
        whole_images=config.attack.whole_images,
    )
    if layouts is None:
        return None, None
    stride = client.detector.extractor.stride
    own, other = (
        torch.stack([tile_patches(pa.decoder.decode(v), grid=grid_hw, stride=stride) for v in vs])
        for vs in layouts
    )
    image_scores: dict[str, Any] = dict(image_match(own, other, attacker.victim.images))
    if memory_reduce == "none" and membership is not None:
        # an ordered raw bank: reconstruction k is of the memory's image k
        truth = attacker.victim.images[: own.shape[0]]
        image_scores["identify"] = identification(own, truth, membership.image_pool)
    return own[0], image_scores


def _guarantee_dict(g: Any) -> dict[str, Any]:
    out = dataclasses.asdict(g)
    if g.formal and g.epsilon is not None:
        # what the bound itself promises against every membership attack, not only the audit's
        out["tpr_bound_at_1%"] = tpr_bound(g.epsilon, g.delta, 0.01)
        out["auc_bound"] = auc_bound(g.epsilon, g.delta)
    if out["epsilon"] is not None and math.isinf(out["epsilon"]):
        out["epsilon"] = "inf"
    return out
