"""The privacy audit: patch geometry, scores, the inversion decoder, config errors, a tiny run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from tests.conftest import make_texture_tree

from feddymem.config import ConfigError
from feddymem.data import DataError
from feddymem.privacy.audit import (
    PatchDecoder,
    best_match,
    extract_patches,
    format_table,
    load_audit_config,
    psnr,
    run_audit,
    score_reconstructions,
    select_data,
    ssim,
    tile_patches,
    train_decoder,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, most of all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_identical_patches_score_maximal() -> None:
    a = _rand((5, 3, 16, 16), 0)
    assert torch.all(psnr(a, a) == 100.0)
    assert torch.allclose(ssim(a, a), torch.ones(5), atol=1e-5)
    b = (a + 0.1 * _rand((5, 3, 16, 16), 1)).clamp(0, 1)
    assert torch.all(psnr(a, b) < 100.0) and torch.all(ssim(a, b) < 1.0)


def test_ssim_matches_scikit_image() -> None:
    a, b = _rand((4, 3, 16, 16), 2), _rand((4, 3, 16, 16), 3)
    b = 0.6 * a + 0.4 * b
    ours = ssim(a, b)
    for i in range(4):
        ref = structural_similarity(
            a[i].permute(1, 2, 0).numpy(),
            b[i].permute(1, 2, 0).numpy(),
            channel_axis=2,
            data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)


def test_best_match_equals_brute_force_and_finds_exact_copies() -> None:
    truth = (_rand((300, 48), 4) * 255).round().to(torch.uint8)
    recon = torch.cat([truth[[17, 250]].float() / 255, _rand((6, 48), 5)])
    mse, idx = best_match(recon, truth, chunk=64)
    brute = ((recon[:, None, :] - truth[None].float() / 255) ** 2).mean(dim=2)
    assert torch.equal(idx, brute.argmin(dim=1))
    assert torch.allclose(mse, brute.min(dim=1).values, atol=1e-5)
    assert idx[:2].tolist() == [17, 250] and float(mse[:2].max()) < 1e-6


def test_patches_are_centred_on_their_cells_and_tile_back() -> None:
    images = _rand((2, 3, 32, 48), 6)
    patches = extract_patches(images, patch_size=16, stride=8)
    assert patches.shape == (2, 4 * 6, 3 * 16 * 16)
    cells = patches.view(2, 24, 3, 16, 16)
    # cell (1, 2) covers pixels [8, 16) x [16, 24): the centre 8 x 8 of its 16 x 16 patch
    assert torch.equal(cells[0, 1 * 6 + 2, :, 4:12, 4:12], images[0, :, 8:16, 16:24])
    assert torch.equal(tile_patches(cells[1], grid=(4, 6), stride=8), images[1])


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


CONFIG = """
[audit]
name = "tiny"
rounds = 1
[data]
victim = "tree"
public = "tree"
victim_images = 8
public_images = 10
reference_images = 6
test_images = 0
[attack]
steps = 20
batch_size = 64
hidden = 32
oracle_steps = 5
items = 24
grid_items = 2
[model]
image_size = 64
batch_size = 8
client_memory_size = 32
kmeans_iterations = 3
[[settings]]
name = "a_full"
group = "a"
generator = false
memory_reduce = "none"
client_memory_size = 100000
[[settings]]
name = "b_pa"
group = "b"
memory_reduce = "position_average"
[[settings]]
name = "c_noise"
group = "c"
generator = false
memory_reduce = "position_average"
dynamic_memory = false
clip_quantile = 0.9
dp_noise_multiplier = 0.5
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return path


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hiden"):
        load_audit_config(_write(tmp_path, CONFIG.replace("hidden = 32", "hiden = 32")))
    with pytest.raises(ConfigError, match="patch_size"):
        load_audit_config(
            _write(tmp_path, CONFIG.replace("steps = 20", "steps = 20\npatch_size = 9"))
        )
    with pytest.raises(ConfigError, match="image_size"):
        load_audit_config(_write(tmp_path, CONFIG + "image_size = 128\n"))
    with pytest.raises(ConfigError, match="dp_clip_norm"):
        load_audit_config(
            _write(tmp_path, CONFIG.replace("clip_quantile = 0.9\n", "dp_clip_norm = 0\n"))
        )
    with pytest.raises(ConfigError, match="group"):
        load_audit_config(_write(tmp_path, CONFIG.replace('group = "b"', 'group = "x"')))


def test_missing_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    config = load_audit_config(_write(tmp_path, CONFIG))
    with pytest.raises(DataError, match=r"\[data\] victim.*not found"):
        select_data(config.data, seed=0)


def test_data_sets_are_disjoint_and_too_few_images_are_refused(tmp_path: Path) -> None:
    make_texture_tree(tmp_path / "tree", n_train=24, n_good=2, n_bad=2, size=32)
    config = load_audit_config(_write(tmp_path, CONFIG))
    data = select_data(config.data, seed=0)
    paths = [{s.path for s in part} for part in (data.victim, data.reference, data.public)]
    assert [len(p) for p in paths] == [8, 6, 10]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    big = load_audit_config(
        _write(tmp_path, CONFIG.replace("public_images = 10", "public_images = 11"))
    )
    with pytest.raises(ConfigError, match="public_images"):
        select_data(big.data, seed=0)


def test_run_audit_writes_the_summary_grid_and_plot(tmp_path: Path) -> None:
    make_texture_tree(tmp_path / "tree", n_train=24, n_good=4, n_bad=4, size=64)
    out = tmp_path / "out"
    report = run_audit(_write(tmp_path, CONFIG), out)
    for name in ("audit.json", "grid.png", "auroc_vs_psnr.png"):
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
