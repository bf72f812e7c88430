"""The audit's image sets (victim, reference, public, test) and their patches and features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from feddymem.config import ConfigError
from feddymem.data import DataError, Sample, load_all, scan
from feddymem.detect.features import PatchFeatureExtractor, patch_vectors
from feddymem.privacy.audit.config import DataSpec


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
        return patch_vectors(self.features)

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
