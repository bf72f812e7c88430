"""Mixture sources: rendered products, real sets with masks, ELPV cells with real or synthetic anomalies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.data.generated.mixtures.mixturekit import check_mixture

from feddymem.data.generated.mixtures.build import build_mixture
from feddymem.data.generated.mixtures.sources import FileSource
from feddymem.data.images import read_image_size


def test_products_mixture(tmp_path: Path) -> None:
    spec_path = build_mixture("products", tmp_path, seed=0)
    check_mixture(spec_path, "products")
    summary = json.loads((spec_path.parent / "mixture.json").read_text())
    assert len(summary["clients"]) == 4
    assert summary["totals"] == {"train": 32, "test/good": 16, "test/anomalous": 16}


def test_surface_from_fake_shared_data(tmp_path: Path, shared_data: Path) -> None:
    spec_path = build_mixture("surface", tmp_path, shared_data=shared_data)
    check_mixture(spec_path, "surface")
    root = spec_path.parent
    kolektor = sorted(root.rglob("kolektorsdd/**/*.png"))
    assert kolektor
    for path in kolektor:
        h, w = read_image_size(path)
        assert h == 640 and 250 <= w <= 257  # long side 640, aspect 1:2.5 kept
    # The anomaly with an all-zero mask is left out.
    assert not list(root.rglob("*exp1_num_029*"))


@pytest.mark.usefixtures("fake_elpv")
@pytest.mark.parametrize("name", ["elpv-cells", "elpv-synth"])
def test_elpv_mixtures_from_a_fake_package(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "cache"
    spec_path = build_mixture(name, tmp_path / "out", elpv_cache=cache)
    check_mixture(spec_path, name)
    assert (cache / "elpv-mono" / "train" / "good").is_dir()
    defects = {p.parent.name for p in spec_path.parent.rglob("test/*/*.png")}
    if name == "elpv-cells":
        assert defects == {"good", "defect"}
        assert not list(spec_path.parent.rglob("ground_truth"))
    else:
        assert "defect" not in defects and len(defects) > 2


def test_file_source_leaves_out_anomalies_without_a_usable_mask(shared_data: Path) -> None:
    root = shared_data / "magnetic_tile"
    source = FileSource("magnetic_tile", root, max_side=256, need_masks=True)
    assert source.pool_size("anomalous") == 9  # 10 anomalies, one with an all-zero mask
    item = source.item("anomalous", 0, np.random.default_rng(0))
    assert max(item.image.shape[:2]) <= 256
    assert item.mask is not None and item.mask.shape == item.image.shape[:2] and item.mask.any()
