"""Privacy audit: how much of a client's images an attacker recovers from what the client uploads.

The attacker knows the frozen backbone phi and holds *public* images of the same kind (never the
victim's). It trains a decoder from one feature vector (one grid position, D channels) back to the
P x P image patch that position covers, then applies it to every item of the memory a client
uploads. Each setting of the audit is one way of building that upload, run through a real
single-client FedDyMem (round 0, then R rounds of local training against the server's k-means
of the upload), e.g.

* (a) a raw PatchCore-style bank: `generator = false`, `memory_reduce = "none"` (patch vectors
  p(x) as they are, a seeded sample of `client_memory_size`);
* (b) FedDyMem's reduced memory: `memory_reduce = "position_average"` (the paper's weighted
  average) or `"kmeans"` (this project's default), with the trained generator z = G_k(p);
* (c) the reduced memory with noise: `dp_clip_norm` (or `clip_quantile`) and
  `dp_noise_multiplier` (feddymem.privacy.dp), with the (epsilon, delta) it gives.

Scoring, per memory item (a seeded sample of `attack.items`): the reconstruction is compared with
every P x P patch (at every position) of every victim image the memory was built from; the best
match (highest PSNR) is kept and its SSIM reported, so the attack gets every benefit of the doubt.
Because a smooth reconstruction always finds a smooth patch that fits, the same attack is run on
a *twin upload*: what the same setting (the victim's final G_k, the same reduce and noise, its
own noise seed) makes from as many *reference* images of the victim's kind (never seen by the
attacker or the client). Its reconstructions are scored against the victim's patches too:
``delta_psnr`` = PSNR(victim's upload) - PSNR(twin upload) is what the upload reveals about
*these* images rather than about the kind of image. Baselines: the mean public
patch, and decoded raw features of reference images (what "a plausible patch" scores). For a
generator that moved away from identity, a second, oracle attacker who knows G_k fine-tunes the
decoder on public z = G_k(p); the stronger of the two is reported.

Each setting's detector image AUROC is measured on the victim's own test split with the
released memory (its final G_k, memory = the upload), never on training data.

Config file (TOML; relative paths are relative to the file)::

    [audit]
    name = "elpv-mono"        # label of the run
    seed = 0                   # every random step (data split, decoder, memories, noise)
    rounds = 2                 # R rounds after round 0 of the single-client federation
    delta = 1e-5               # delta of the reported (epsilon, delta)

    [data]
    victim = "../data/elpv-mono"   # MVTec layout: the client's train/good subset and test split
    public = "../data/elpv-mono"   # attacker's images (its train/good); the same root as victim
                                   # -> drawn disjoint from the victim and reference images
    victim_images = 100        # the client's training normals (10 % are held out for its threshold)
    public_images = 200        # attacker's training images
    reference_images = 100     # other images of the victim's kind: the twin upload (0: victim_images)
    test_images = 200          # seeded, class-stratified cap on the victim's test split (0: all)

    [attack]
    patch_size = 16            # P, even, >= the feature stride (8); the patch centred on a cell
    hidden = 256               # decoder width (MLP D -> hidden -> hidden -> 3 P P)
    steps = 1000               # decoder training steps on public (feature, patch) pairs
    batch_size = 256
    lr = 0.002                 # AdamW with a one-cycle schedule
    oracle_steps = 300         # fine-tuning on public G_k(p) for a trained generator; 0: off
    items = 384                # memory items attacked per setting (seeded sample)
    grid_items = 6             # patch pairs per setting in grid.png
    whole_images = 16          # images tiled back from an ordered full raw bank and scored

    [model]                    # FedDyMemConfig options shared by every setting
    image_size = 224           # feature options (backbone, layers, image_size, keep_aspect)
                               # and seed may be set here only

    [[settings]]               # one per upload to audit, in table order
    name = "a_raw_bank"
    group = "a"                # a, b or c: the row of the issue's table
    generator = false          # ... any FedDyMemConfig option for this setting
    memory_reduce = "none"
    client_memory_size = 8192
    # clip_quantile = 0.9      # instead of dp_clip_norm: C = this quantile of the norms of the
                               # attacker-side public features (data-independent of the victim)

Outputs in the output folder: ``audit.json`` (settings, AUROC, attack scores, baselines,
guarantees, timings, the resolved config), ``grid.png`` (originals beside reconstructions;
whole-image reconstructions of position-indexed memories) and ``auroc_vs_psnr.png``.
Working files (feature cache, client states) go to ``<out>/work``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
import shutil
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feddymem.config import ConfigError, FedDyMemConfig, from_dict, to_dict
from feddymem.data import DataError, Sample, load_all, scan
from feddymem.detect.features import PatchFeatureExtractor
from feddymem.method.aggregate import aggregate_memories
from feddymem.method.client import FedDyMemClient, build_upload
from feddymem.method.reduce import ReducedMemory
from feddymem.privacy.dp import privacy_guarantee

log = logging.getLogger(__name__)

Group = Literal["a", "b", "c"]
_FEATURE_KEYS = frozenset({"backbone", "layers", "image_size", "keep_aspect", "seed"})
_SECTIONS = frozenset({"audit", "data", "attack", "model", "settings"})


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AuditRun:
    """`[audit]`: label, seed, R rounds after round 0, delta of the reported (epsilon, delta)."""

    name: str = "audit"
    seed: int = 0
    rounds: int = 2
    delta: float = 1e-5

    def __post_init__(self) -> None:
        _need(self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}")
        _need(0.0 < self.delta < 1.0, f"delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """`[data]`: where the victim's and the attacker's images are and how many to take."""

    victim: Path
    public: Path
    victim_images: int = 100
    public_images: int = 200
    reference_images: int = 0
    test_images: int = 200

    def __post_init__(self) -> None:
        _need(self.victim_images >= 2, f"victim_images must be >= 2, got {self.victim_images}")
        _need(self.public_images >= 2, f"public_images must be >= 2, got {self.public_images}")
        _need(self.reference_images >= 0, "reference_images must be >= 0")
        _need(self.test_images >= 0, f"test_images must be >= 0, got {self.test_images}")


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """`[attack]`: the inversion decoder and how many items are scored and drawn."""

    patch_size: int = 16
    hidden: int = 256
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    oracle_steps: int = 300
    items: int = 384
    grid_items: int = 6
    whole_images: int = 16

    def __post_init__(self) -> None:
        _need(
            self.patch_size >= 8 and self.patch_size % 2 == 0,
            f"patch_size must be even and >= 8, got {self.patch_size}",
        )
        _need(self.hidden >= 8, f"hidden must be >= 8, got {self.hidden}")
        _need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _need(self.oracle_steps >= 0, f"oracle_steps must be >= 0, got {self.oracle_steps}")
        _need(self.items >= 1, f"items must be >= 1, got {self.items}")
        _need(self.grid_items >= 1, f"grid_items must be >= 1, got {self.grid_items}")
        _need(self.whole_images >= 1, f"whole_images must be >= 1, got {self.whole_images}")


@dataclass(frozen=True, kw_only=True)
class SettingSpec:
    """One `[[settings]]` entry: the upload to audit. `clip_quantile` (when set) replaces
    `model.dp_clip_norm` by that quantile of the public features' norms at run time."""

    name: str
    group: Group
    model: FedDyMemConfig
    clip_quantile: float | None = None


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """The whole audit: `[audit]`, `[data]`, `[attack]`, the settings (models resolved)."""

    run: AuditRun
    data: DataSpec
    attack: AttackSpec
    model: dict[str, Any]
    settings: tuple[SettingSpec, ...]
    source: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings, each setting's full model config)."""
        return {
            "audit": dataclasses.asdict(self.run),
            "data": {k: str(v) if isinstance(v, Path) else v for k, v in _fields(self.data)},
            "attack": dataclasses.asdict(self.attack),
            "model": dict(self.model),
            "settings": [
                {
                    "name": s.name,
                    "group": s.group,
                    "clip_quantile": s.clip_quantile,
                    "model": to_dict(s.model),
                }
                for s in self.settings
            ],
            "source": None if self.source is None else str(self.source),
        }


def _fields(obj: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
    return dict(value)


def parse_audit_config(raw: dict[str, Any], *, base: Path) -> AuditConfig:
    """Validate a parsed TOML tree; relative data paths are taken from `base`.

    Every error is a ConfigError naming the section and the key.
    """
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(f"audit config: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    run = from_dict(AuditRun, _table(raw, "audit"), where="[audit]")
    data_raw = _table(raw, "data")
    for key in ("victim", "public"):
        if key not in data_raw:
            raise ConfigError(f"[data] {key}: missing (a folder in MVTec layout)")
        if not isinstance(data_raw[key], str):
            raise ConfigError(f"[data] {key}: must be a path string")
        data_raw[key] = (base / data_raw[key]).resolve()
    data = from_dict(DataSpec, data_raw, where="[data]")
    attack = from_dict(AttackSpec, _table(raw, "attack"), where="[attack]")
    model = _table(raw, "model")
    model.setdefault("seed", run.seed)
    from_dict(FedDyMemConfig, dict(model), where="[model]")  # validate the shared part once
    entries = raw.get("settings")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("[[settings]]: at least one setting is needed")
    settings: list[SettingSpec] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"[[settings]] #{i}: must be a table")
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"[[settings]] #{i} name: letters, digits, '_', '.', '-' needed")
        where = f"[[settings]] {name}"
        group = entry.pop("group", None)
        if group not in ("a", "b", "c"):
            raise ConfigError(f"{where} group: must be 'a', 'b' or 'c', got {group!r}")
        quantile = entry.pop("clip_quantile", None)
        if quantile is not None:
            if not isinstance(quantile, int | float) or not 0.0 < float(quantile) <= 1.0:
                raise ConfigError(f"{where} clip_quantile: must be in (0, 1], got {quantile!r}")
            if "dp_clip_norm" in entry:
                raise ConfigError(f"{where} clip_quantile: give it or dp_clip_norm, not both")
        fixed = sorted(_FEATURE_KEYS & set(entry))
        if fixed:
            raise ConfigError(
                f"{where} {fixed[0]}: set it in [model] (one decoder and one data split serve "
                "every setting)"
            )
        values = {**model, **entry}
        if quantile is not None:
            values["dp_clip_norm"] = 1.0  # placeholder, replaced at run time
        settings.append(
            SettingSpec(
                name=name,
                group=group,
                model=from_dict(FedDyMemConfig, values, where=where),
                clip_quantile=None if quantile is None else float(quantile),
            )
        )
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError(f"[[settings]] name: duplicated in {names}")
    return AuditConfig(
        run=run, data=data, attack=attack, model=model, settings=tuple(settings), source=None
    )


def load_audit_config(path: Path) -> AuditConfig:
    """Read and validate an audit config file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"audit config not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        config = parse_audit_config(raw, base=path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return dataclasses.replace(config, source=path.resolve())


# --- data -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditData:
    """The disjoint image sets of one audit (lists of samples)."""

    victim: list[Sample]  # the client's training normals (it holds some out for its threshold)
    public: list[Sample]  # the attacker's images
    reference: list[Sample]  # other images of the victim's kind, for the twin upload
    test: list[Sample]  # the victim's test split (capped, stratified)


def _scan_root(root: Path, key: str) -> Any:
    if not root.is_dir():
        raise DataError(
            f"[data] {key}: folder {root} not found (export it, e.g. `feddymem data elpv "
            f"--out {root}` or `feddymem data synth ...`)"
        )
    try:
        return scan(root)
    except DataError as err:
        raise DataError(f"[data] {key}: {err}") from None


def select_data(spec: DataSpec, *, seed: int) -> AuditData:
    """Seeded, disjoint victim / reference / public image sets and a stratified test cap."""
    victim_split = _scan_root(spec.victim, "victim")
    pool = sorted(victim_split.train, key=lambda s: str(s.path))
    rng = np.random.default_rng(seed)
    order = [pool[int(i)] for i in rng.permutation(len(pool))]
    n_ref = spec.reference_images or spec.victim_images
    same = spec.public.resolve() == spec.victim.resolve()
    need = spec.victim_images + n_ref + (spec.public_images if same else 0)
    if need > len(order):
        raise ConfigError(
            f"[data] victim_images + reference_images{' + public_images' if same else ''} = "
            f"{need} exceed the {len(order)} images of {spec.victim}/train/good"
        )
    victim = order[: spec.victim_images]
    reference = order[spec.victim_images : spec.victim_images + n_ref]
    if same:
        public = order[spec.victim_images + n_ref : need]
    else:
        public_pool = sorted(_scan_root(spec.public, "public").train, key=lambda s: str(s.path))
        if spec.public_images > len(public_pool):
            raise ConfigError(
                f"[data] public_images = {spec.public_images} exceed the {len(public_pool)} "
                f"images of {spec.public}/train/good"
            )
        pick = rng.permutation(len(public_pool))[: spec.public_images]
        public = [public_pool[int(i)] for i in pick]
    test = list(victim_split.test)
    if not test or len({s.label for s in test}) < 2:
        raise DataError(f"[data] victim: {spec.victim}/test needs normal and anomalous images")
    if spec.test_images and spec.test_images < len(test):
        keep: list[Sample] = []
        for label in (0, 1):
            group = [s for s in test if s.label == label]
            share = max(1, round(spec.test_images * len(group) / len(test)))
            keep.extend(group[int(i)] for i in sorted(rng.permutation(len(group))[:share]))
        test = keep
    return AuditData(victim=victim, public=public, reference=reference, test=test)


# --- patches and features -------------------------------------------------------------------------
def extract_patches(images: torch.Tensor, *, patch_size: int, stride: int) -> torch.Tensor:
    """The P x P patch centred on every feature cell, (B, 3, H_in, W_in) -> (B, H*W, 3*P*P).

    Cell (i, j) covers pixels [s i, s (i + 1)) x [s j, s (j + 1)) at stride s; its patch is
    centred on the cell, the image reflect-padded by (P - s) / 2. Rows are in the row-major
    order of the feature grid (H = H_in / s), values as the input (RGB in [0, 1]).
    """
    if patch_size < stride or (patch_size - stride) % 2:
        raise ValueError(f"patch_size {patch_size} must be >= stride {stride}, same parity")
    pad = (patch_size - stride) // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect") if pad else images
    return F.unfold(x, kernel_size=patch_size, stride=stride).transpose(1, 2).contiguous()


def tile_patches(patches: torch.Tensor, *, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """Whole image from per-cell patches: (H*W, 3, P, P) -> (3, H*s, W*s), each cell's centre."""
    h, w = grid
    p = patches.shape[-1]
    pad = (p - stride) // 2
    centre = patches[:, :, pad : pad + stride, pad : pad + stride]
    return (
        centre.reshape(h, w, 3, stride, stride)
        .permute(2, 0, 3, 1, 4)
        .reshape(3, h * stride, w * stride)
    )


@dataclass
class PatchSet:
    """Features and patches of a list of images: `features` (N, D, H, W) float32 p(x),
    `patches` (N, H*W, 3*P*P) uint8, `images` (N, 3, H_in, W_in) float32 in [0, 1]."""

    features: torch.Tensor
    patches: torch.Tensor
    images: torch.Tensor

    @property
    def flat_features(self) -> torch.Tensor:
        """(N*H*W, D), row-major over images then cells (matches `flat_patches`)."""
        f = self.features
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])

    @property
    def flat_patches(self) -> torch.Tensor:
        """(N*H*W, 3*P*P) uint8."""
        return self.patches.reshape(-1, self.patches.shape[-1])


def load_patch_set(
    samples: Sequence[Sample],
    *,
    extractor: PatchFeatureExtractor,
    image_hw: tuple[int, int],
    patch_size: int,
    batch_size: int = 16,
) -> PatchSet:
    """Load `samples` at `image_hw`, compute p(x) and the patch of every cell."""
    batch = load_all(samples, size=image_hw, with_masks=False)
    if batch.images.shape[0] == 0:
        raise DataError(f"none of {len(samples)} images could be loaded")
    images = batch.images
    feats = torch.cat(
        [extractor(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    ).float()
    patches = extract_patches(images, patch_size=patch_size, stride=extractor.stride)
    return PatchSet(
        features=feats, patches=(patches * 255.0).round().to(torch.uint8), images=images
    )


# --- decoder --------------------------------------------------------------------------------------
class PatchDecoder(nn.Module):
    """Inversion decoder: one memory vector (d,) -> the RGB patch (3, P, P) it covers, in [0, 1].

    Inputs are standardised with the attacker's public statistics (`mean`, `std`, (d,)); an MLP
    d -> hidden -> hidden -> 3 P P with GELU, sigmoid output.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, *, in_dim: int, patch_size: int, hidden: int, seed: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 3 * patch_size * patch_size),
        )
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)

    def set_input_stats(self, features: torch.Tensor) -> None:
        """Standardise inputs by the mean and std of `features` (N, d)."""
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(features.std(dim=0).clamp_min(1e-6))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """(M, d) -> (M, 3, P, P)."""
        out = self.net((vectors.float() - self.mean) / self.std)
        return torch.sigmoid(out).view(-1, 3, self.patch_size, self.patch_size)

    @torch.no_grad()
    def decode(self, vectors: torch.Tensor, *, batch: int = 4096) -> torch.Tensor:
        """Batched inference, (M, d) -> (M, 3, P, P)."""
        self.eval()
        return torch.cat([self(vectors[i : i + batch]) for i in range(0, vectors.shape[0], batch)])


def train_decoder(
    decoder: PatchDecoder,
    features: torch.Tensor,
    patches: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Fit `decoder` on (feature (N, d), patch (N, 3 P P) uint8) pairs by MSE; returns the mean
    loss of the last 10 % of steps. AdamW with a one-cycle learning-rate schedule, seeded batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    decoder.train()
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, features.shape[0], (batch_size,), generator=gen)
        target = patches[idx].float().div_(255.0)
        loss = F.mse_loss(decoder(features[idx]).flatten(1), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
    decoder.eval()
    return float(np.mean(tail))


# --- scores ---------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of pairs (M, ...) in [0, 1], per pair (M,); identical pairs give 100 dB."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7) -> torch.Tensor:
    """SSIM of pairs (M, C, P, P) in [0, 1], per pair (M,), as scikit-image's default.

    Uniform win_size x win_size window, sample covariances, K1 = 0.01, K2 = 0.03, data range 1,
    averaged over the valid window positions and the channels.
    """
    x, y = a.float(), b.float()
    c = x.shape[1]
    pool = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    ux, uy = pool(x), pool(y)
    uxx, uyy, uxy = pool(x * x), pool(y * y), pool(x * y)
    n = win_size * win_size
    cov = n / (n - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(s.shape[0], c, -1).mean(dim=2).mean(dim=1)


def best_match(
    recon: torch.Tensor, truth: torch.Tensor, *, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each reconstruction (M, K) in [0, 1], the truth row (N, K) (uint8 or [0, 1]) with the
    smallest squared error: returns (mse (M,), index (M,)). Chunked matrix products."""
    r = recon.float().flatten(1)
    scale = 1.0 / 255.0 if truth.dtype == torch.uint8 else 1.0
    r2 = r.pow(2).sum(dim=1, keepdim=True)
    best = torch.full((r.shape[0],), math.inf)
    arg = torch.zeros(r.shape[0], dtype=torch.long)
    for start in range(0, truth.shape[0], chunk):
        t = truth[start : start + chunk].float() * scale
        d = r2 + t.pow(2).sum(dim=1) - 2.0 * (r @ t.T)
        m, a = d.min(dim=1)
        better = m < best
        best = torch.where(better, m, best)
        arg = torch.where(better, a + start, arg)
    return best.clamp_min(0.0) / r.shape[1], arg


@dataclass(frozen=True)
class MatchScores:
    """Best-match scores of reconstructions (M, 3, P, P): per item `psnr`, `ssim` (M,) and the
    matched truth patches `matched` (M, 3, P, P) float in [0, 1]."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    matched: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {
            "psnr": float(self.psnr.mean()),
            "psnr_median": float(self.psnr.median()),
            "ssim": float(self.ssim.mean()),
        }


def score_reconstructions(recon: torch.Tensor, truth: torch.Tensor) -> MatchScores:
    """PSNR of each reconstruction's best match among `truth` (N, 3 P P) uint8, and its SSIM."""
    mse, idx = best_match(recon, truth)
    matched = (truth[idx].float() / 255.0).view_as(recon)
    return MatchScores(
        psnr=10.0 * torch.log10(1.0 / mse.clamp_min(1e-10)),
        ssim=ssim(recon, matched),
        matched=matched,
    )


# --- one setting ----------------------------------------------------------------------------------
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
    client: FedDyMemClient, *, rounds: int
) -> tuple[ReducedMemory, list[dict[str, float]]]:
    """Round 0 and R rounds of a single-client federation; the last upload and round metrics.

    The server step is the real one (aggregate_memories over the one upload), so G_k trains
    against a global memory as it would in a federation of one.
    """
    cfg = client.config
    memory, metrics = client.fit_round(round_idx=0, global_memory=None)
    history = [metrics]
    for t in range(1, rounds + 1):
        global_memory = aggregate_memories(
            [memory],
            num_centers=cfg.global_memory_size,
            method=cfg.server_aggregation,
            seed=cfg.seed * 1_000 + t,
            iterations=cfg.kmeans_iterations,
        )
        memory, metrics = client.fit_round(round_idx=t, global_memory=global_memory)
        history.append(metrics)
    return memory, history


def _sample_items(n: int, k: int, *, seed: int) -> torch.Tensor:
    if n <= k:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


class _Attacker:
    """Holds the public data, the p-decoder, and the victim's truth patches."""

    def __init__(self, *, config: AuditConfig, public: PatchSet, victim: PatchSet) -> None:
        self.config = config
        self.public = public
        self.victim = victim
        spec = config.attack
        self.public_x = public.flat_features
        self.public_y = public.flat_patches
        self.decoder = PatchDecoder(
            in_dim=self.public_x.shape[1],
            patch_size=spec.patch_size,
            hidden=spec.hidden,
            seed=config.run.seed,
        )
        self.decoder.set_input_stats(self.public_x)
        t0 = time.perf_counter()
        self.train_loss = train_decoder(
            self.decoder,
            self.public_x,
            self.public_y,
            steps=spec.steps,
            batch_size=spec.batch_size,
            lr=spec.lr,
            seed=config.run.seed + 1,
        )
        self.train_s = time.perf_counter() - t0
        log.info("p-decoder trained: loss %.5f in %.0f s", self.train_loss, self.train_s)
        self.victim_truth = victim.flat_patches

    def oracle(self, generator: nn.Module, *, seed: int) -> tuple[PatchDecoder, float]:
        """Decoder for an attacker who knows G_k: fine-tuned on public z = G_k(p(x)); also the
        mean relative drift |G_k(p) - p| / |p| over the public vectors."""
        zx = _embed_flat(generator, self.public.features)
        decoder = copy.deepcopy(self.decoder)
        decoder.set_input_stats(zx)
        spec = self.config.attack
        train_decoder(
            decoder,
            zx,
            self.public_y,
            steps=spec.oracle_steps,
            batch_size=spec.batch_size,
            lr=spec.lr / 2,
            seed=seed,
        )
        drift = float(
            ((zx - self.public_x).norm(dim=1) / self.public_x.norm(dim=1).clamp_min(1e-6)).mean()
        )
        return decoder, drift

    def score(
        self, decoder: PatchDecoder, vectors: torch.Tensor
    ) -> tuple[torch.Tensor, MatchScores]:
        """Reconstructions (M, 3, P, P) of memory items (M, d) and their best-match scores
        against the victim's patches."""
        recon = decoder.decode(vectors)
        return recon, score_reconstructions(recon, self.victim_truth)


@torch.no_grad()
def _embed(generator: nn.Module | None, features: torch.Tensor) -> torch.Tensor:
    """z = G_k(p) in chunks, (N, D, H, W) -> (N, d, H, W); p itself without a generator."""
    if generator is None:
        return features.float()
    return torch.cat([generator(features[i : i + 32].float()) for i in range(0, len(features), 32)])


def _embed_flat(generator: nn.Module | None, features: torch.Tensor) -> torch.Tensor:
    z = _embed(generator, features)
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


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


def audit_setting(
    setting: SettingSpec,
    *,
    config: AuditConfig,
    data: AuditData,
    attacker: _Attacker,
    twin_features: torch.Tensor,
    work: Path,
    grid_hw: tuple[int, int],
    extractor: PatchFeatureExtractor | None = None,
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
    state = work / "state" / setting.name
    if state.exists():
        shutil.rmtree(state)
    shared = (
        extractor if extractor is not None and extractor.matches(cfg.backbone, cfg.layers) else None
    )
    client = FedDyMemClient(
        train=data.victim,
        test=data.test,
        config=cfg,
        state_dir=state,
        feature_cache=work / "cache",
        extractor=shared,
    )
    memory, history = run_client(client, rounds=config.run.rounds)
    metrics = client.evaluate(memory.vectors)
    log.info(
        "%s: image AUROC %.4f (%d items)", setting.name, metrics.image_auroc, len(memory.vectors)
    )
    generator = client.generator.eval() if client.generator is not None else None
    twin_cfg = dataclasses.replace(cfg, seed=cfg.seed + 7_919)
    twin = build_upload(
        _embed(generator, twin_features), config=twin_cfg, round_idx=config.run.rounds
    )

    spec = config.attack
    items = _sample_items(memory.vectors.shape[0], spec.items, seed=config.run.seed + 7)
    # Same item indices when the two uploads are the same size: for position-indexed memories
    # and ordered raw banks that pairs items by (image, position), which cancels the large
    # position-to-position spread of PSNR from the difference.
    twin_items = (
        items
        if twin.vectors.shape[0] == memory.vectors.shape[0]
        else _sample_items(twin.vectors.shape[0], spec.items, seed=config.run.seed + 8)
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
        attacks[which] = _attack_summary(vs_victim, twin_vs_victim)
        if best is None or attacks[which]["psnr"] > attacks[best[0]]["psnr"]:
            best = (which, decoder, recon, vs_victim)
    assert best is not None
    which, decoder, recon, vs_victim = best

    # Whole images, where the upload keeps the grid layout: a position-indexed memory is one
    # image; a full raw bank in (image, position) order (no sampling) is n_k images.
    tiled = None
    h, w = grid_hw
    hw = h * w
    stride = client.detector.extractor.stride
    image_scores: dict[str, float | None] | None = None
    n_img = len(client.train_samples)
    layouts: tuple[torch.Tensor, torch.Tensor] | None = None
    d = memory.vectors.shape[1]
    if cfg.memory_reduce == "position_average" and memory.vectors.shape[0] == hw:
        if twin.vectors.shape[0] == hw:
            layouts = (memory.vectors.view(1, hw, d), twin.vectors.view(1, hw, d))
    elif cfg.memory_reduce == "none" and memory.vectors.shape[0] == n_img * hw:
        n_twin = twin.vectors.shape[0] // hw
        if twin.vectors.shape[0] == n_twin * hw and n_twin >= 1:
            k, k_twin = min(spec.whole_images, n_img), min(spec.whole_images, n_twin)
            layouts = (
                memory.vectors[: k * hw].view(k, hw, d),
                twin.vectors[: k_twin * hw].view(k_twin, hw, d),
            )
    if layouts is not None:
        own, other = (
            torch.stack([tile_patches(decoder.decode(v), grid=grid_hw, stride=stride) for v in vs])
            for vs in layouts
        )
        tiled = own[0]
        image_scores = _image_match(own, other, attacker.victim.images)

    guarantee = privacy_guarantee(
        cfg, rounds=config.run.rounds, delta=config.run.delta, num_positions=h * w
    )
    summary: dict[str, Any] = {
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
        "attack_items": int(items.numel()),
        "attack": {"decoder": which, **attacks[which]},
        "attacks": attacks,
        "whole_image": image_scores,
        "generator_drift": drift,
        "guarantee": _guarantee_dict(guarantee),
        "rounds": [{k: float(v) for k, v in m.items()} for m in history],
        "wall_s": time.perf_counter() - t0,
    }
    g = spec.grid_items
    return SettingResult(
        name=setting.name,
        group=setting.group,
        summary=summary,
        recon=recon[:g],
        matched=vs_victim.matched[:g],
        tiled=tiled,
    )


def _image_match(
    recon: torch.Tensor, twin: torch.Tensor, images: torch.Tensor
) -> dict[str, float | None]:
    """Whole-image reconstructions (K, 3, H_in, W_in) of the upload and of its twin against the
    victim's images (N, 3, H_in, W_in): mean PSNR / SSIM of each one's best-matching image."""
    out: dict[str, float | None] = {"images": float(recon.shape[0])}
    flat = images.flatten(1)
    per_image: list[torch.Tensor] = []
    for key, rec in (("", recon), ("twin_", twin)):
        mse, idx = best_match(rec.flatten(1), flat, chunk=64)
        p = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
        per_image.append(p)
        out[f"{key}psnr"] = float(p.mean())
        out[f"{key}ssim"] = float(ssim(rec, images[idx]).mean())
    out["delta_psnr_se"] = _delta_se(per_image[0], per_image[1])
    out["delta_psnr"] = float(per_image[0].mean() - per_image[1].mean())
    return out


def _delta_se(own: torch.Tensor, twin: torch.Tensor) -> float | None:
    """Standard error of mean(own) - mean(twin): paired by index when the counts match (an
    arbitrary pairing only makes it the unpaired value), else the two independent means'."""
    n, m = own.numel(), twin.numel()
    if n == m and n >= 2:
        return float((own - twin).std()) / math.sqrt(n)
    if n >= 2 and m >= 2:
        return math.sqrt(float(own.var()) / n + float(twin.var()) / m)
    return None


def _attack_summary(victim: MatchScores, twin: MatchScores | None) -> dict[str, Any]:
    v = victim.summary()
    if twin is None:
        return v
    t = twin.summary()
    return {
        **v,
        "twin_psnr": t["psnr"],
        "twin_ssim": t["ssim"],
        "delta_psnr": v["psnr"] - t["psnr"],
        "delta_psnr_se": _delta_se(victim.psnr, twin.psnr),
        "delta_ssim": v["ssim"] - t["ssim"],
    }


def _guarantee_dict(g: Any) -> dict[str, Any]:
    out = dataclasses.asdict(g)
    if out["epsilon"] is not None and math.isinf(out["epsilon"]):
        out["epsilon"] = "inf"
    return out


# --- figures --------------------------------------------------------------------------------------
def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.clamp(0, 1).permute(1, 2, 0).numpy()


def save_grid(
    path: Path,
    results: Sequence[SettingResult],
    *,
    whole: Sequence[tuple[str, torch.Tensor]],
) -> None:
    """grid.png: whole images (victim, decodings) on top; per setting a strip of
    (best-matching original | reconstruction) patch pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(results)
    cols = max(1, len(whole))
    fig = plt.figure(figsize=(max(2.2 * cols, 10), 2.6 + 1.5 * len(results)), layout="constrained")
    spec = fig.add_gridspec(rows, cols, height_ratios=[2.2] + [1.0] * len(results))
    for j, (title, image) in enumerate(whole):
        ax = fig.add_subplot(spec[0, j])
        ax.imshow(_to_hwc(image), interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    for i, res in enumerate(results, start=1):
        ax = fig.add_subplot(spec[i, :])
        tiles = []
        gap = torch.ones(3, res.recon.shape[-2], 2)
        for orig, rec in zip(res.matched, res.recon, strict=True):
            tiles += [orig, rec, gap, gap]
        strip = torch.cat(tiles[:-2], dim=2) if tiles else torch.ones(3, 8, 8)
        ax.imshow(_to_hwc(strip), interpolation="nearest")
        a = res.summary["attack"]
        ax.set_title(
            f"({res.group}) {res.name}: original | reconstruction pairs — best-match PSNR "
            f"{a['psnr']:.1f} dB, SSIM {a['ssim']:.2f}, ΔPSNR vs twin upload {a['delta_psnr']:+.2f} dB",
            fontsize=8,
        )
        ax.axis("off")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def save_plot(path: Path, settings: Sequence[dict[str, Any]], baselines: dict[str, Any]) -> None:
    """auroc_vs_psnr.png: image AUROC against the attack's best-match PSNR (left) and against
    the victim-specific gain over the twin upload, delta PSNR with 95 % intervals (right:
    patches filled, whole images hollow where the upload keeps the layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    colours = {"a": "tab:red", "b": "tab:blue", "c": "tab:green"}

    def tag(s: dict[str, Any]) -> str:
        eps = s["guarantee"]["epsilon"]
        return f"({s['group']}) {s['name']}" + (f", ε={eps:.3g}" if isinstance(eps, float) else "")

    for s in settings:
        colour, y = colours.get(s["group"], "k"), s["image_auroc"]
        left.scatter(s["attack"]["psnr"], y, color=colour, s=36)
        left.annotate(
            tag(s), (s["attack"]["psnr"], y), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
        for part, marker, face in ((s["attack"], "o", colour), (s.get("whole_image"), "s", "none")):
            if not part:
                continue
            se = part.get("delta_psnr_se")
            right.errorbar(
                part["delta_psnr"],
                y,
                xerr=None if se is None else 1.96 * se,
                fmt=marker,
                color=colour,
                mfc=face,
                ms=6,
                capsize=3,
                lw=1,
            )
        right.annotate(
            tag(s),
            (s["attack"]["delta_psnr"], y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    for name, style in (("mean_public_patch", ":"), ("public_decoded", "--")):
        left.axvline(baselines[name]["psnr"], color="grey", ls=style, lw=1, label=name)
    left.legend(fontsize=7, loc="upper left")
    left.set_xlabel("best-match PSNR of patch reconstructions vs victim patches (dB)", fontsize=8)
    right.axvline(0.0, color="grey", ls=":", lw=1)
    right.scatter([], [], marker="o", color="k", label="patches (items)")
    right.scatter([], [], marker="s", facecolors="none", edgecolors="k", label="whole images")
    right.legend(fontsize=7, loc="lower right")
    right.set_xlabel("ΔPSNR: victim's upload − a similar site's upload, ±95 % (dB)", fontsize=8)
    for ax in (left, right):
        ax.set_ylabel("image AUROC (victim's test split)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Utility against leakage: each point is one upload setting", fontsize=9)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --- the audit ------------------------------------------------------------------------------------
def _resolve_clip(settings: Sequence[SettingSpec], norms: torch.Tensor) -> list[SettingSpec]:
    out = []
    for s in settings:
        if s.clip_quantile is None:
            out.append(s)
            continue
        clip = float(torch.quantile(norms, s.clip_quantile))
        out.append(dataclasses.replace(s, model=dataclasses.replace(s.model, dp_clip_norm=clip)))
    return out


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
    base = from_dict(FedDyMemConfig, dict(config.model), where="[model]")
    # The client's own split: the images its memory is built from are the attack's truth.
    probe = FedDyMemClient(
        train=data.victim, test=data.test, config=base, state_dir=work / "state" / "_probe"
    )
    image_hw = probe.image_hw
    extractor = probe.detector.extractor
    in_memory = probe.train_samples
    patch = config.attack.patch_size
    t0 = time.perf_counter()
    public, victim, reference = (
        load_patch_set(samples, extractor=extractor, image_hw=image_hw, patch_size=patch)
        for samples in (data.public, in_memory, data.reference)
    )
    features_s = time.perf_counter() - t0
    grid_hw = (int(public.features.shape[2]), int(public.features.shape[3]))
    attacker = _Attacker(config=config, public=public, victim=victim)

    # Baselines: what "no information about these images" and "a plausible patch" score.
    mean_patch = (public.flat_patches.float().mean(dim=0) / 255.0).view(1, 3, patch, patch)
    ref_items = _sample_items(reference.flat_features.shape[0], config.attack.items, seed=seed + 13)
    ref_recon, pub_v = attacker.score(attacker.decoder, reference.flat_features[ref_items])
    fidelity = psnr(
        ref_recon, reference.flat_patches[ref_items].float().div(255.0).view_as(ref_recon)
    )
    baselines = {
        "mean_public_patch": _attack_summary(
            score_reconstructions(mean_patch, attacker.victim_truth), None
        ),
        "public_decoded": _attack_summary(pub_v, None),
        "decoder_fidelity_psnr": float(fidelity.mean()),
    }

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


def _pm(se: float | None) -> str:
    return "" if se is None else f" ± {1.96 * se:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of one audit report: per setting the best-match PSNR / SSIM of the
    patch reconstructions, delta PSNR against the twin upload (+- 1.96 standard errors), the
    whole-image best-match PSNR (own upload / twin) where the layout allows, image AUROC and
    epsilon."""
    lines = [
        "| setting | items | patch PSNR (dB) | patch SSIM | ΔPSNR vs twin (dB) "
        "| whole-image PSNR, own / twin ± 95% of Δ (dB) | image AUROC | ε (δ, releases) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report["settings"]:
        g = s["guarantee"]
        if g["formal"]:
            eps = g["epsilon"]
            value = f"{eps:.3g}" if isinstance(eps, float) else str(eps)
            eps_text = f"{value} ({g['delta']:g}, {g['releases']})"
        elif g["clip_norm"] is not None:
            eps_text = "no formal bound"
        else:
            eps_text = "—"
        a = s["attack"]
        whole = s.get("whole_image")
        whole_text = (
            f"{whole['psnr']:.2f} / {whole['twin_psnr']:.2f}{_pm(whole['delta_psnr_se'])}"
            if whole
            else "—"
        )
        lines.append(
            f"| ({s['group']}) {s['name']} | {s['memory_items']} | {a['psnr']:.2f} "
            f"| {a['ssim']:.3f} | {a['delta_psnr']:+.2f}{_pm(a['delta_psnr_se'])} "
            f"| {whole_text} | {s['image_auroc']:.3f} | {eps_text} |"
        )
    b = report["baselines"]
    for key in ("mean_public_patch", "public_decoded"):
        lines.append(
            f"| baseline: {key} | — | {b[key]['psnr']:.2f} | {b[key]['ssim']:.3f} | — | — | — | — |"
        )
    return "\n".join(lines)
