"""The public vote: unit votes, the noisy selection, an upload of public vectors only, its
(epsilon, delta), and a real client voting over a public texture tree."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from feddymem.config import ConfigError, FedDyMemConfig
from feddymem.data import scan
from feddymem.method.client import FedDyMemClient
from feddymem.method.reduce import ReducedMemory
from feddymem.privacy.dp import epsilon_for, privacy_guarantee
from feddymem.privacy.public_vote import (
    PublicCodebook,
    image_votes,
    noisy_selection,
    public_codebook,
    public_vote_memory,
    vote_threshold,
)

VOTE = FedDyMemConfig(
    image_size=64,
    batch_size=4,
    client_memory_size=64,
    kmeans_iterations=3,
    train_batch_size=4,
    public_vote=True,
    vote_cells=4,
    vote_noise=0.5,
)


def _clusters(n: int, centres: torch.Tensor, *, seed: int, hw: int = 3) -> torch.Tensor:
    """n patch maps (n, d, hw, hw) whose vectors sit near the given `centres` (k, d)."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, centres.shape[0], (n, hw * hw), generator=gen)
    flat = centres[pick] + 0.01 * torch.randn(n, hw * hw, centres.shape[1], generator=gen)
    return flat.permute(0, 2, 1).reshape(n, centres.shape[1], hw, hw)


def test_each_image_casts_a_vote_of_norm_one_so_one_image_moves_the_histogram_by_one() -> None:
    centres = torch.eye(6) * 10.0
    z = _clusters(5, centres[:3], seed=0)
    votes = image_votes(z, centres)
    assert votes.shape == (6,) and bool((votes[3:] == 0).all())
    one = image_votes(z[:1], centres)
    assert float(one.norm()) == pytest.approx(1.0)
    assert float((votes - image_votes(z[1:], centres)).norm()) == pytest.approx(1.0)


def test_the_noisy_selection_keeps_voted_cells_and_drops_empty_ones_at_the_rule() -> None:
    votes = torch.tensor([40.0, 30.0, 0.0, 0.0], dtype=torch.float64)
    chosen = noisy_selection(votes, noise=1.0, seed=3)
    assert chosen.tolist()[:2] == [True, True]
    assert vote_threshold(1.0, 4) == pytest.approx(0.6745, abs=1e-3)  # z at 3/4
    # seeded, and the largest noisy vote survives when nothing passes
    assert torch.equal(chosen, noisy_selection(votes, noise=1.0, seed=3))
    low = noisy_selection(torch.zeros(4, dtype=torch.float64), noise=1e-9, seed=1)
    assert int(low.sum()) >= 1
    allowed = torch.tensor([False, True, True, True])
    assert not bool(noisy_selection(votes, noise=1.0, seed=3, allowed=allowed)[0])


def _codebook(centres: torch.Tensor) -> PublicCodebook:
    public = _clusters(40, centres, seed=5)
    return public_codebook(public, config=VOTE, seed=0)


def test_the_upload_holds_only_public_items_of_the_cells_the_site_uses() -> None:
    centres = torch.eye(8)[:4] * 10.0
    codebook = _codebook(centres)
    site = _clusters(30, centres[:2], seed=9)  # the site's images show two of four patterns
    memory = public_vote_memory(site, codebook, config=VOTE, round_idx=0)
    public_rows = {tuple(v.tolist()) for v in codebook.items.vectors}
    assert all(tuple(v.tolist()) in public_rows for v in memory.vectors)
    # no item of the patterns the site never shows; the site's own vectors are not in it
    near = torch.cdist(memory.vectors, centres).argmin(dim=1)
    assert set(near.tolist()) == {0, 1}
    site_flat = site.permute(0, 2, 3, 1).reshape(-1, site.shape[1])
    assert float(torch.cdist(memory.vectors, site_flat).min()) > 0
    # what travels besides the items is public: their public weights, the public image count
    assert memory.n_images == codebook.items.n_images == 40
    # the vote is seeded by the round: another round draws other noise
    assert isinstance(public_vote_memory(site, codebook, config=VOTE, round_idx=1), ReducedMemory)


def test_config_refuses_what_the_vote_cannot_combine_with() -> None:
    with pytest.raises(ConfigError, match="position_average"):
        dataclasses.replace(VOTE, memory_reduce="position_average")
    with pytest.raises(ConfigError, match="upload_noise"):
        dataclasses.replace(VOTE, upload_noise=1.0)
    with pytest.raises(ConfigError, match="vote_cells"):
        dataclasses.replace(VOTE, vote_cells=1)
    with pytest.raises(ConfigError, match="vote_noise"):
        dataclasses.replace(VOTE, vote_noise=-1.0)


def test_the_guarantee_is_formal_only_with_a_g_k_the_data_did_not_train() -> None:
    once = dataclasses.replace(VOTE, vote_noise=4.0, dynamic_memory=False)
    g = privacy_guarantee(once, rounds=2, delta=1e-5, num_positions=784)
    assert g.formal and g.releases == 1 and g.sensitivity == 1.0
    assert g.epsilon == pytest.approx(epsilon_for(4.0, 1, 1e-5))
    fixed = dataclasses.replace(VOTE, vote_noise=4.0, local_epochs=0)
    assert privacy_guarantee(fixed, rounds=2, delta=1e-5, num_positions=784).releases == 3
    trained = privacy_guarantee(VOTE, rounds=2, delta=1e-5, num_positions=784)
    assert not trained.formal and "trained" in trained.reason


def test_a_client_votes_over_its_public_images_and_uploads_only_their_vectors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import make_texture_tree

    site = scan(make_texture_tree(tmp_path / "site", n_train=12, texture="brick", seed=1))
    public = scan(make_texture_tree(tmp_path / "public", n_train=12, texture="brick", seed=2))
    with pytest.raises(ValueError, match="public normal images"):
        FedDyMemClient(train=site.train, test=site.test, config=VOTE, state_dir=tmp_path / "x")
    client = FedDyMemClient(
        train=site.train,
        test=site.test,
        config=VOTE,
        state_dir=tmp_path / "state",
        public=public.train,
    )
    memory, _ = client.fit_round(round_idx=0, global_memory=None)
    with torch.no_grad():
        own = client._embedded(client.features())
        pub = client._embedded(client.public_features())
    own_rows = {tuple(v.tolist()) for v in own.permute(0, 2, 3, 1).reshape(-1, own.shape[1])}
    pub_rows = {tuple(v.tolist()) for v in pub.permute(0, 2, 3, 1).reshape(-1, pub.shape[1])}
    uploaded = [tuple(v.tolist()) for v in memory.vectors]
    assert all(v in pub_rows for v in uploaded) and not any(v in own_rows for v in uploaded)
    assert memory.n_images == len(public.train)
    # the site's threshold comes from its held-out normals (nothing of its own to cross-fit)
    metrics = client.evaluate(memory.vectors)
    assert client.calibration_folds_ == 0 and 0.0 <= metrics.image_auroc <= 1.0
    # a vote after G_k trained on the site's images carries no formal bound: the site is told
    with caplog.at_level(logging.WARNING, logger="feddymem.method.client"):
        client.fit_round(round_idx=1, global_memory=memory.vectors)
    assert "no formal (epsilon, delta)" in caplog.text


def test_a_site_key_changes_every_noise_the_config_alone_would_draw() -> None:
    from feddymem.method.client import build_upload
    from feddymem.privacy.defences import defence_seed

    # key 0 keeps the seeds a function of the config (the audit's and benchmarks' figures)
    assert defence_seed(3, 1, 0) == defence_seed(3, 1, 0, key=0) != defence_seed(3, 1, 0, key=7)
    z = torch.randn(6, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    noisy = FedDyMemConfig(client_memory_size=16, upload_noise=1.0, memory_reduce="none")
    plain, keyed, again = (
        build_upload(z, config=noisy, round_idx=1, noise_key=k).vectors for k in (0, 7, 7)
    )
    assert torch.equal(keyed, again) and not torch.equal(plain, keyed)
    centres = torch.eye(8)[:4] * 10.0
    codebook = _codebook(centres)
    site = _clusters(30, centres[:2], seed=9)
    loud = dataclasses.replace(VOTE, vote_noise=40.0)  # noise decides which cells pass
    picks = {
        tuple(
            public_vote_memory(
                site, codebook, config=loud, round_idx=0, noise_key=k
            ).weights.tolist()
        )
        for k in range(1, 9)
    }
    assert len(picks) > 1
