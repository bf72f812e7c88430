"""The inversion decoder learns and the best match is never worse than the source."""

from __future__ import annotations

import torch

from feddymem.privacy.audit import (
    PatchDecoder,
    psnr,
    score_reconstructions,
    train_decoder,
)


def test_decoder_reconstructs_its_training_features_better_than_noise() -> None:
    gen = torch.Generator().manual_seed(7)
    n, d, p = 512, 12, 8
    latent = torch.randn(n, d, generator=gen)  # patches and features share a latent code
    pixels = 0.5 + 0.4 * torch.tanh(latent @ torch.randn(d, 3 * p * p, generator=gen) / 3)
    patches = (pixels * 255).round().to(torch.uint8)
    features = latent @ torch.randn(d, d, generator=gen)
    decoder = PatchDecoder(in_dim=d, patch_size=p, hidden=64, seed=0)
    decoder.set_input_stats(features)
    target = patches[:64].float().div(255).view(-1, 3, p, p)
    before = float(psnr(decoder.decode(features[:64]), target).mean())
    train_decoder(decoder, features, patches, steps=300, batch_size=64, lr=3e-3, seed=1)
    trained = float(psnr(decoder.decode(features[:64]), target).mean())
    noise = float(psnr(decoder.decode(torch.randn(64, d, generator=gen) * 5), target).mean())
    assert trained > before + 1.0
    assert trained > noise + 1.0
    scores = score_reconstructions(decoder.decode(features[:64]), patches.view(n, -1))
    assert float(scores.psnr.mean()) >= trained - 1e-4  # best match is never worse than source
