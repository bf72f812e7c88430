"""Fixtures of the mixture tests: tiny builds, fake shared data and a fake ELPV package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.data.generated.mixtures.mixturekit import TINY, fake_set

from feddymem.data import elpv as elpv_module
from feddymem.data.generated.mixtures.recipe import SCALES


@pytest.fixture(autouse=True)
def tiny_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCALES, "quick", TINY)


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake magnetic_tile (varied sizes, one all-zero mask) and kolektorsdd (500 x 1250)."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    fake_set(
        root / "magnetic_tile",
        rng,
        sizes=[(123, 286), (599, 244), (265, 375)],
        defects={"blowhole": 5, "uneven": 5},
        n_train=16,
        n_good=8,
        stem="exp1_num_",
        empty_mask="exp1_num_029",
    )
    fake_set(
        root / "kolektorsdd",
        rng,
        sizes=[(1250, 500), (1262, 500)],
        defects={"crack": 8},
        n_train=14,
        n_good=8,
        stem="kos",
    )
    return root


@pytest.fixture()
def fake_elpv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the elpv-dataset loader by 140 fake 300 x 300 cells (mono and poly)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(140, 300, 300), dtype=np.uint8)
    per_type = np.r_[np.zeros(50), np.ones(20)]
    probabilities = np.r_[per_type, per_type]
    types = np.array(["mono"] * 70 + ["poly"] * 70)
    monkeypatch.setattr(elpv_module, "_load_elpv", lambda: (images, probabilities, types))
