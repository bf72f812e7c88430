"""The attacker: public data, the trained p-decoder, the oracle decoder, the victim's truth."""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from feddymem.detect.features import patch_vectors
from feddymem.privacy.audit.config import AuditConfig
from feddymem.privacy.audit.data import PatchSet
from feddymem.privacy.audit.decoder import PatchDecoder, train_decoder
from feddymem.privacy.audit.scores import MatchScores, score_reconstructions

log = logging.getLogger(__name__)


def sample_items(n: int, k: int, *, seed: int) -> torch.Tensor:
    if n <= k:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


class Attacker:
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
        zx = embed_flat(generator, self.public.features)
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
def embed(generator: nn.Module | None, features: torch.Tensor) -> torch.Tensor:
    """z = G_k(p) in chunks, (N, D, H, W) -> (N, d, H, W); p itself without a generator."""
    if generator is None:
        return features.float()
    return torch.cat([generator(features[i : i + 32].float()) for i in range(0, len(features), 32)])


def embed_flat(generator: nn.Module | None, features: torch.Tensor) -> torch.Tensor:
    z = embed(generator, features)
    return patch_vectors(z)
