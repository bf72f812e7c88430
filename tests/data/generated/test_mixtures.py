"""Tests for feddymem.data.generated.mixtures: layout, spec, disjoint splits, masks, determinism, errors.

Builds run at a tiny scale (patched into SCALES["quick"]); the real shared data and the ELPV
package are replaced by generated fakes of the same shape.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddymem.data import elpv as elpv_module
from feddymem.data.generated import mixtures
from feddymem.data.generated.mixtures import (
    MIXTURES,
    SCALES,
    MixtureError,
    ScaleSizes,
    build_mixture,
    register_cli,
)
from feddymem.data.images import read_image_size, read_mask
from feddymem.federation.spec import load_client_data, load_spec

TINY = ScaleSizes(train=8, good=4, anomalous=4)


@pytest.fixture(autouse=True)
def tiny_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCALES, "quick", TINY)


# --------------------------------------------------------------------------------------------
# Fakes
# --------------------------------------------------------------------------------------------


def _save(array: np.ndarray, path: Path, *, jpeg: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG" if jpeg else "PNG")


def _fake_set(
    root: Path,
    rng: np.random.Generator,
    *,
    sizes: list[tuple[int, int]],
    defects: dict[str, int],
    n_train: int,
    n_good: int,
    stem: str,
    empty_mask: str | None = None,
) -> None:
    """A grey MVTec-layout set of noise images (JPEG) with rectangular defects (PNG masks)."""

    def image(i: int) -> np.ndarray:
        h, w = sizes[i % len(sizes)]
        return rng.integers(90, 140, size=(h, w), dtype=np.uint8)

    counter = 0
    for folder, n in (("train/good", n_train), ("test/good", n_good)):
        for _ in range(n):
            _save(image(counter), root / folder / f"{stem}{counter:03d}.jpg", jpeg=True)
            counter += 1
    for defect, n in defects.items():
        for _ in range(n):
            pixels = image(counter)
            h, w = pixels.shape
            mask = np.zeros((h, w), dtype=np.uint8)
            name = f"{stem}{counter:03d}"
            if name != empty_mask:
                mask[h // 3 : h // 3 + max(2, h // 40), w // 4 : w // 2] = 255
            pixels[mask > 0] = 250
            _save(pixels, root / "test" / defect / f"{name}.jpg", jpeg=True)
            _save(mask, root / "ground_truth" / defect / f"{name}_mask.png")
            counter += 1


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake magnetic_tile (varied sizes, one all-zero mask) and kolektorsdd (500 x 1250)."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    _fake_set(
        root / "magnetic_tile",
        rng,
        sizes=[(123, 286), (599, 244), (265, 375)],
        defects={"blowhole": 5, "uneven": 5},
        n_train=16,
        n_good=8,
        stem="exp1_num_",
        empty_mask="exp1_num_029",
    )
    _fake_set(
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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_mixture(spec_path: Path, name: str) -> None:
    """The spec parses, every client's data loads, splits are disjoint, masks fit."""
    recipe = MIXTURES[name]
    spec = load_spec(spec_path)
    assert spec.federation.name == name
    assert spec.client_names == tuple(c.name for c in recipe.clients)
    assert spec.federation.min_clients == len(recipe.clients)
    summary = json.loads((spec_path.parent / "mixture.json").read_text())
    assert summary["settings"]["name"] == name

    train_digests: set[str] = set()
    test_digests: set[str] = set()
    all_paths: list[Path] = []
    for index, client in enumerate(recipe.clients):
        data = load_client_data(spec, index)
        shares = dict(client.shares)
        assert set(data.sources) == set(shares)
        assert {s.source for s in data.train} == set(shares)
        assert {s.source for s in data.test} == set(shares)
        assert len(data.train) == TINY.train
        assert sum(s.label == 0 for s in data.test) == TINY.good
        assert sum(s.label == 1 for s in data.test) == TINY.anomalous
        assert all(s.path.name.startswith(f"{s.source}_") for s in data.train + data.test)
        counts = summary["clients"][client.name]["counts"]
        assert sum(c["train/good"] for c in counts.values()) == TINY.train
        for sample in data.test:
            hw = read_image_size(sample.path)
            assert max(hw) <= (640 if sample.source == "kolektorsdd" else 256)
            if sample.label == 1 and recipe.pixel_masks:
                assert sample.mask_path is not None
                mask = read_mask(sample.mask_path, expected_hw=hw)
                assert mask.any()
            if not recipe.pixel_masks:
                assert sample.mask_path is None
        train_digests |= {_digest(s.path) for s in data.train}
        test_digests |= {_digest(s.path) for s in data.test}
        all_paths += [s.path for s in data.train + data.test]
    assert not train_digests & test_digests, "a training image reappears in a test set"
    assert len(set(all_paths)) == len(all_paths)


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


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


def test_textures_layout_spec_and_splits(tmp_path: Path) -> None:
    spec_path = build_mixture("textures", tmp_path, seed=0)
    assert spec_path == tmp_path / "textures" / "federation.toml"
    _check_mixture(spec_path, "textures")
    root = tmp_path / "textures"
    assert (root / "client-0" / "brick" / "train" / "good").is_dir()
    assert not list(tmp_path.glob(".*partial"))


def test_build_is_deterministic_and_rerun_is_a_noop(tmp_path: Path) -> None:
    a = build_mixture("textures", tmp_path / "a", seed=3)
    b = build_mixture("textures", tmp_path / "b", seed=3)
    assert _files(a.parent) == _files(b.parent)
    before = {p: p.stat().st_mtime_ns for p in a.parent.rglob("*") if p.is_file()}
    assert build_mixture("textures", tmp_path / "a", seed=3) == a
    after = {p: p.stat().st_mtime_ns for p in a.parent.rglob("*") if p.is_file()}
    assert before == after
    # Another seed replaces the build cleanly: the result equals a fresh build of that seed.
    build_mixture("textures", tmp_path / "a", seed=4)
    fresh = build_mixture("textures", tmp_path / "c", seed=4)
    assert _files(a.parent) == _files(fresh.parent)
    assert _files(a.parent) != _files(b.parent)


def test_incomplete_build_is_rebuilt(tmp_path: Path) -> None:
    spec = build_mixture("textures", tmp_path, seed=0)
    reference = _files(spec.parent)
    victim = next((spec.parent / "client-1").rglob("*.png"))
    victim.unlink()
    build_mixture("textures", tmp_path, seed=0)
    assert _files(spec.parent) == reference


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "textures").mkdir()
    (tmp_path / "textures" / "notes.txt").write_text("mine")
    with pytest.raises(MixtureError, match=r"refusing"):
        build_mixture("textures", tmp_path)
    assert (tmp_path / "textures" / "notes.txt").read_text() == "mine"


def test_products_mixture(tmp_path: Path) -> None:
    spec_path = build_mixture("products", tmp_path, seed=0)
    _check_mixture(spec_path, "products")
    summary = json.loads((spec_path.parent / "mixture.json").read_text())
    assert len(summary["clients"]) == 4
    assert summary["totals"] == {"train": 32, "test/good": 16, "test/anomalous": 16}


def test_surface_from_fake_shared_data(tmp_path: Path, shared_data: Path) -> None:
    spec_path = build_mixture("surface", tmp_path, shared_data=shared_data)
    _check_mixture(spec_path, "surface")
    root = spec_path.parent
    kolektor = sorted(root.rglob("kolektorsdd/**/*.png"))
    assert kolektor
    for path in kolektor:
        h, w = read_image_size(path)
        assert h == 640 and 250 <= w <= 257  # long side 640, aspect 1:2.5 kept
    # The anomaly with an all-zero mask is left out.
    assert not list(root.rglob("*exp1_num_029*"))


def test_surface_without_shared_data_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MixtureError, match=r"nowhere.*--shared-data"):
        build_mixture("surface", tmp_path / "out", shared_data=missing)
    monkeypatch.setenv(mixtures.SHARED_DATA_ENV, str(missing))
    with pytest.raises(MixtureError, match="FEDDYMEM_SHARED_DATA"):
        build_mixture("surface", tmp_path / "out")
    (missing / "magnetic_tile").mkdir(parents=True)
    with pytest.raises(MixtureError, match=r"magnetic_tile.*train/good"):
        build_mixture("surface", tmp_path / "out", shared_data=missing)
    assert not (tmp_path / "out" / "surface").exists()


@pytest.mark.usefixtures("fake_elpv")
@pytest.mark.parametrize("name", ["elpv-cells", "elpv-synth"])
def test_elpv_mixtures_from_a_fake_package(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "cache"
    spec_path = build_mixture(name, tmp_path / "out", elpv_cache=cache)
    _check_mixture(spec_path, name)
    assert (cache / "elpv-mono" / "train" / "good").is_dir()
    defects = {p.parent.name for p in spec_path.parent.rglob("test/*/*.png")}
    if name == "elpv-cells":
        assert defects == {"good", "defect"}
        assert not list(spec_path.parent.rglob("ground_truth"))
    else:
        assert "defect" not in defects and len(defects) > 2


def test_pool_too_small_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    monkeypatch.setitem(SCALES, "full", ScaleSizes(train=500, good=4, anomalous=4))
    with pytest.raises(MixtureError, match=r"holds \d+ images, the clients need \d+"):
        build_mixture("surface", tmp_path, scale="full", shared_data=shared_data)


def test_unknown_name_and_scale(tmp_path: Path) -> None:
    with pytest.raises(MixtureError, match=r"known mixtures: .*products.*textures"):
        build_mixture("nope", tmp_path)
    with pytest.raises(MixtureError, match="known scales"):
        build_mixture("textures", tmp_path, scale="huge")  # type: ignore[arg-type]
    with pytest.raises(MixtureError, match="non-negative"):
        build_mixture("textures", tmp_path, seed=-1)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddymem data")
    register_cli(parser.add_subparsers(dest="data_command", required=True))
    return parser


def _run(argv: list[str]) -> tuple[int, str]:
    args = _parser().parse_args(argv)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = args.func(args)
    return code, buffer.getvalue()


def test_cli_list_and_build(tmp_path: Path) -> None:
    code, out = _run(["mixture", "--list"])
    assert code == 0
    assert {row["name"] for row in json.loads(out)} == set(MIXTURES)
    code, out = _run(["mixture", "textures", "--out", str(tmp_path), "--seed", "2"])
    assert code == 0
    result = json.loads(out)
    assert Path(result["spec"]) == tmp_path / "textures" / "federation.toml"
    assert result["totals"]["train"] == 3 * TINY.train
    with pytest.raises(MixtureError, match="--list"):
        _run(["mixture"])
