"""build_mixture: layout, determinism, no-op reruns, rebuilds, refused folders and requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.data.generated.mixtures.mixturekit import check_mixture, files

from feddymem.data.generated.mixtures.build import build_mixture
from feddymem.data.generated.mixtures.errors import MixtureError


def test_textures_layout_spec_and_splits(tmp_path: Path) -> None:
    spec_path = build_mixture("textures", tmp_path, seed=0)
    assert spec_path == tmp_path / "textures" / "federation.toml"
    check_mixture(spec_path, "textures")
    root = tmp_path / "textures"
    assert (root / "client-0" / "brick" / "train" / "good").is_dir()
    assert not list(tmp_path.glob(".*partial"))


def test_build_is_deterministic_and_rerun_is_a_noop(tmp_path: Path) -> None:
    a = build_mixture("textures", tmp_path / "a", seed=3)
    b = build_mixture("textures", tmp_path / "b", seed=3)
    assert files(a.parent) == files(b.parent)
    before = {p: p.stat().st_mtime_ns for p in a.parent.rglob("*") if p.is_file()}
    assert build_mixture("textures", tmp_path / "a", seed=3) == a
    after = {p: p.stat().st_mtime_ns for p in a.parent.rglob("*") if p.is_file()}
    assert before == after
    # Another seed replaces the build cleanly: the result equals a fresh build of that seed.
    build_mixture("textures", tmp_path / "a", seed=4)
    fresh = build_mixture("textures", tmp_path / "c", seed=4)
    assert files(a.parent) == files(fresh.parent)
    assert files(a.parent) != files(b.parent)


def test_incomplete_build_is_rebuilt(tmp_path: Path) -> None:
    spec = build_mixture("textures", tmp_path, seed=0)
    reference = files(spec.parent)
    victim = next((spec.parent / "client-1").rglob("*.png"))
    victim.unlink()
    build_mixture("textures", tmp_path, seed=0)
    assert files(spec.parent) == reference


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "textures").mkdir()
    (tmp_path / "textures" / "notes.txt").write_text("mine")
    with pytest.raises(MixtureError, match=r"refusing"):
        build_mixture("textures", tmp_path)
    assert (tmp_path / "textures" / "notes.txt").read_text() == "mine"


def test_unknown_name_and_scale(tmp_path: Path) -> None:
    with pytest.raises(MixtureError, match=r"known mixtures: .*products.*textures"):
        build_mixture("nope", tmp_path)
    with pytest.raises(MixtureError, match="known scales"):
        build_mixture("textures", tmp_path, scale="huge")  # type: ignore[arg-type]
    with pytest.raises(MixtureError, match="non-negative"):
        build_mixture("textures", tmp_path, seed=-1)
