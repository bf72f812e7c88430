"""The real FedDyMem client on a tiny texture tree: rounds, state on disk, the feature cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from feddymem.config import FedDyMemConfig
from feddymem.data import scan
from feddymem.method import client as local_model
from feddymem.method.client import FEATURES_FILE, FedDyMemClient

CONFIG = FedDyMemConfig(
    image_size=64, batch_size=4, client_memory_size=32, kmeans_iterations=3, train_batch_size=4
)


def _no_loading(*args: object, **kwargs: object) -> None:
    raise AssertionError("features were extracted again")


def _client(root: Path, state: Path, cache: Path | None) -> FedDyMemClient:
    split = scan(root)
    return FedDyMemClient(
        train=split.train, test=split.test, config=CONFIG, state_dir=state, feature_cache=cache
    )


def test_shared_feature_cache_is_reused_across_runs_and_follows_the_files(
    texture_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = _client(texture_tree, tmp_path / "run1", cache)
    feats = first.features()
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not (tmp_path / "run1" / FEATURES_FILE).exists()

    # A second run (fresh state folder) loads the same tensor instead of extracting again.
    second = _client(texture_tree, tmp_path / "run2", cache)
    with monkeypatch.context() as patch:
        patch.setattr(local_model, "iter_batches", _no_loading)
        assert torch.equal(second.features(), feats)
    assert list(cache.glob("*.pt")) == files

    # Touching a training file changes the key: the cache never serves stale features.
    path = second.train_samples[0].path
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = _client(texture_tree, tmp_path / "run3", cache)
    third.features()
    assert len(list(cache.glob("*.pt"))) == 2


def test_without_a_shared_cache_features_live_in_the_state_folder(
    texture_tree: Path, tmp_path: Path
) -> None:
    client = _client(texture_tree, tmp_path / "run", None)
    memory, metrics = client.fit_round(round_idx=0, global_memory=None)
    assert (tmp_path / "run" / FEATURES_FILE).is_file()
    assert memory.vectors.shape == (32, client.dim)
    assert metrics["n_images"] == len(client.train_samples)


@pytest.mark.parametrize("reduce", ["coreset", "kmeans", "position_average", "none"])
def test_build_upload_uses_the_configured_reducer_and_the_audit_shares_it(reduce: str) -> None:
    from feddymem.method.reduce import REDUCERS
    from feddymem.privacy import audit

    z = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    cfg = FedDyMemConfig(memory_reduce=reduce, client_memory_size=20, kmeans_iterations=3, seed=3)
    upload = local_model.build_upload(z, config=cfg, round_idx=2)
    seed = 3 * 100_003 + 2
    if reduce == "position_average":
        expected = REDUCERS[reduce](z, gamma_c=cfg.gamma_c, seed=seed, iterations=3)
    elif reduce == "kmeans":
        expected = REDUCERS[reduce](z, size=20, seed=seed, iterations=3)
    else:
        expected = REDUCERS[reduce](z, size=20, seed=seed)
    assert torch.equal(upload.vectors, expected.vectors)
    assert torch.equal(upload.weights, expected.weights)
    if reduce == "coreset":
        # real patch vectors of the client, each weighted by the vectors nearest to it
        flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
        assert upload.vectors.shape == (20, 8)
        assert bool((upload.vectors[:, None, :] == flat[None]).all(dim=2).any(dim=1).all())
        assert float(upload.weights.sum()) == flat.shape[0]
    # the privacy audit builds its twin uploads with the same function, not a copy of it
    assert audit.build_upload is local_model.build_upload


def test_a_tiled_client_reduces_tile_features_and_its_detector_stitches(
    texture_tree: Path, tmp_path: Path
) -> None:
    """tile='on' with 32 px tiles on the 64 px images: each image is 2 x 2 tiles (overlap 0),
    the memory-reduce sees every tile's patches, the site's detector scores whole images."""
    import dataclasses

    cfg = dataclasses.replace(CONFIG, image_size=32, tile="on", tile_overlap=0)
    split = scan(texture_tree)
    client = FedDyMemClient(train=split.train, test=split.test, config=cfg, state_dir=tmp_path)
    assert client.detector.tiling_ is not None and client.image_hw == (64, 64)
    feats = client.features()
    assert feats.shape[0] == 4 * len(client.train_samples)
    assert feats.shape[-2:] == (4, 4)  # a 32 px tile at stride 8
    memory, _ = client.fit_round(round_idx=0, global_memory=None)
    assert memory.vectors.shape == (32, client.dim)
    det = client.detector_with(memory.vectors)
    result = det.score(torch.rand(2, 3, 64, 64))
    assert result.anomaly_maps.shape == (2, 64, 64)
    path = client.export(memory.vectors, tmp_path / "site.pt")
    from feddymem.detect.registry import load_detector

    assert load_detector(path).tiling_ == det.tiling_


def _two_sites(tmp_path: Path, config: FedDyMemConfig) -> tuple[FedDyMemClient, FedDyMemClient]:
    from tests.conftest import make_texture_tree

    sites = []
    for name, texture, seed in (("a", "brick", 1), ("b", "gravel", 2)):
        split = scan(make_texture_tree(tmp_path / name, n_train=20, texture=texture, seed=seed))
        sites.append(
            FedDyMemClient(
                train=split.train, test=split.test, config=config, state_dir=tmp_path / f"s{name}"
            )
        )
    return sites[0], sites[1]


def test_crossfit_threshold_scores_every_normal_out_of_fold_when_mg_holds_the_upload(
    tmp_path: Path,
) -> None:
    """M_g that keeps every uploaded item (the union): the site finds its own items in it, and
    its threshold rests on every training normal scored against the other site's items plus a
    memory built without the normal's fold, and on the held-out ones. Out of fold, normals
    score higher than against the memory they helped build."""
    import dataclasses

    from feddymem.method.aggregate import aggregate_memories

    cfg = dataclasses.replace(CONFIG, generator=False, calibration_folds=3)
    a, b = _two_sites(tmp_path, cfg)
    ma, _ = a.fit_round(round_idx=0, global_memory=None)
    mb, _ = b.fit_round(round_idx=0, global_memory=None)
    union = aggregate_memories([ma, mb], num_centers=None, method="union")
    others = a.others_items(union)
    assert others is not None and torch.equal(others, mb.vectors.float())
    det = a.detector_with(union)
    n_train = len(a.train_samples)
    assert a.calibration_normals_ == n_train + len(a.calibration) > len(a.calibration)
    assert a.calibration_folds_ == 3
    assert det.threshold_ is not None and det.calibration_scores_ is not None
    assert det.calibration_scores_.shape == (a.calibration_normals_,)
    oof = a.crossfit_results(union)
    assert oof is not None and sum(len(r.image_scores) for r in oof) == n_train
    out_of_fold = torch.cat([r.image_scores for r in oof]).numpy()
    # raised by how far the held-out normals (which G_k never saw) sit above them
    assert a.calibration_shift_ >= 0.0
    shifted = (out_of_fold + a.calibration_shift_).astype("float32")
    assert (det.calibration_scores_[:n_train] == shifted).all()
    in_sample = det.score_samples(a.train_samples).image_scores
    assert out_of_fold.mean() > in_sample.mean()

    # the server's k-means merged the items: the held-out normals alone, as "holdout" does
    merged = aggregate_memories([ma, mb], num_centers=24, method="kmeans", iterations=3)
    assert a.others_items(merged) is None and a.crossfit_results(merged) is None
    holdout_cfg = dataclasses.replace(cfg, calibration="holdout")
    h, _ = _two_sites(tmp_path / "holdout", holdout_cfg)
    h.fit_round(round_idx=0, global_memory=None)
    for site, memory in ((a, merged), (h, union)):
        site.detector_with(memory)
        assert site.calibration_normals_ == len(site.calibration)
        assert site.calibration_folds_ == 0
    # float16 on the wire: the site looks for its items as the server received them
    half = dataclasses.replace(cfg, wire_dtype="float16")
    a16, b16 = _two_sites(tmp_path / "half", half)
    m16 = [s.fit_round(round_idx=0, global_memory=None)[0] for s in (a16, b16)]
    union16 = torch.cat([m.vectors.half().float() for m in m16])
    assert a16.others_items(union16) is not None
