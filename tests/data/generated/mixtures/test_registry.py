"""The registered mixtures, and where recipes that need shared data look for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddymem.data.generated.mixtures import registry
from feddymem.data.generated.mixtures.build import build_mixture
from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.registry import MIXTURES


def test_registry_has_the_required_recipes() -> None:
    assert {"elpv-cells", "surface", "textures", "products", "elpv-synth"} <= set(MIXTURES)
    for recipe in MIXTURES.values():
        assert len(recipe.clients) >= 3
        assert len(recipe.sources) >= 2
        for client in recipe.clients:
            assert abs(sum(x for _, x in client.shares) - 1.0) < 1e-9
            assert {s for s, _ in client.shares} <= set(recipe.sources)
    assert MIXTURES["surface"].needs_shared_data
    assert not MIXTURES["elpv-cells"].pixel_masks


def test_surface_without_shared_data_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MixtureError, match=r"nowhere.*--shared-data"):
        build_mixture("surface", tmp_path / "out", shared_data=missing)
    monkeypatch.setenv(registry.SHARED_DATA_ENV, str(missing))
    with pytest.raises(MixtureError, match="FEDDYMEM_SHARED_DATA"):
        build_mixture("surface", tmp_path / "out")
    (missing / "magnetic_tile").mkdir(parents=True)
    with pytest.raises(MixtureError, match=r"magnetic_tile.*train/good"):
        build_mixture("surface", tmp_path / "out", shared_data=missing)
    assert not (tmp_path / "out" / "surface").exists()
