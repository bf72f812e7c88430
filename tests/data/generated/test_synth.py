"""Tests for feddymem.data.generated.synth: the mask contract of every kind, and the data-set writer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import brick
from skimage.transform import resize

from feddymem.data.generated.synth import (
    ANOMALY_KINDS,
    MARKER_NAME,
    MIN_CHANGE,
    Anomaly,
    SynthesisError,
    blob,
    cutpaste,
    insert_anomaly,
    perlin_blend,
    perlin_noise,
    scratch,
    synthesize_dataset,
)

KINDS = ("cutpaste", "perlin", "scratch", "blob")
N_SEEDS = 25


# --------------------------------------------------------------------------------------------
# Generated images
# --------------------------------------------------------------------------------------------


def _textured(seed: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A colour texture: per-channel sinusoids plus pixel noise, ``(H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    channels = []
    for _ in range(3):
        fy, fx = rng.uniform(0.05, 0.4, size=2)
        wave = np.sin(fy * rows + rng.uniform(0, 6)) * np.cos(fx * cols + rng.uniform(0, 6))
        channels.append(128 + 70 * wave + rng.normal(0, 12, size=shape))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _gray_brick(shape: tuple[int, int] = (48, 80)) -> np.ndarray:
    """scikit-image's brick texture, downsized, as a three-channel grey image."""
    small = resize(brick(), shape, preserve_range=True, anti_aliasing=True)
    gray = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


IMAGES: dict[str, np.ndarray] = {
    "textured": _textured(0),
    "gray_brick": _gray_brick(),
    "black": np.zeros((32, 40, 3), dtype=np.uint8),
    "white": np.full((40, 32, 3), 255, dtype=np.uint8),
}


def _assert_contract(image: np.ndarray, result: Anomaly) -> None:
    """The mask contract: shapes, non-empty mask, exact outside, visible change inside."""
    out, mask = result
    assert out.dtype == np.uint8
    assert out.shape == image.shape
    assert mask.dtype == np.bool_
    assert mask.shape == image.shape[:2]
    assert mask.any()
    assert np.array_equal(out[~mask], image[~mask])
    change = np.abs(out.astype(np.int16) - image.astype(np.int16)).max(axis=-1)
    assert (change[mask] >= MIN_CHANGE).all()


# --------------------------------------------------------------------------------------------
# Mask contract, as a property over many seeds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_name", sorted(IMAGES))
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_keeps_the_mask_contract(kind: str, image_name: str) -> None:
    image = IMAGES[image_name]
    before = image.copy()
    for seed in range(N_SEEDS):
        _assert_contract(image, insert_anomaly(image, kind, np.random.default_rng(seed)))
    assert np.array_equal(image, before), "the input must not be modified"


@pytest.mark.parametrize("image_name", ["textured", "gray_brick", "white"])
def test_cutpaste_variants_keep_the_mask_contract(image_name: str) -> None:
    image = IMAGES[image_name]
    other = _textured(7, shape=(50, 90))
    for seed in range(N_SEEDS):
        rng = np.random.default_rng(seed)
        _assert_contract(image, cutpaste(image, rng, scar=True))
        _assert_contract(image, cutpaste(image, rng, source=other))
        _assert_contract(image, cutpaste(image, rng, source=other, scar=True))


def test_perlin_with_a_texture_image_keeps_the_mask_contract() -> None:
    image = IMAGES["textured"]
    texture = _textured(3, shape=(30, 100))
    for seed in range(N_SEEDS):
        _assert_contract(image, perlin_blend(image, np.random.default_rng(seed), texture=texture))


@pytest.mark.parametrize("kind", KINDS)
def test_grey_images_get_grey_anomalies(kind: str) -> None:
    image = IMAGES["gray_brick"]
    colour = _textured(5)
    options: dict[str, object] = {}
    if kind == "cutpaste":
        options = {"source": colour}
    elif kind == "perlin":
        options = {"texture": colour}
    for seed in range(10):
        out, _ = insert_anomaly(image, kind, np.random.default_rng(seed), **options)
        assert np.array_equal(out[..., 0], out[..., 1])
        assert np.array_equal(out[..., 0], out[..., 2])


# --------------------------------------------------------------------------------------------
# Sizes the docstrings promise
# --------------------------------------------------------------------------------------------


def test_cutpaste_patch_is_a_rectangle_of_two_to_fifteen_percent() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        _, mask = cutpaste(image, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == mask.sum(), "the patch must be a full rectangle"
        # Rounding the side lengths to whole pixels moves the area a little off the bounds.
        assert 0.015 <= mask.mean() <= 0.17
        aspect = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
        assert 0.25 <= aspect <= 4.0


def test_scar_is_thin() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        _, mask = cutpaste(image, np.random.default_rng(seed), scar=True)
        assert mask.mean() < 0.05


def test_perlin_region_area_is_bounded() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        _, mask = perlin_blend(image, np.random.default_rng(seed))
        assert 0.01 <= mask.mean() <= 0.5


def test_scratch_and_blob_are_small() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        assert scratch(image, np.random.default_rng(seed)).mask.mean() < 0.15
        assert blob(image, np.random.default_rng(seed)).mask.mean() < 0.2


def test_perlin_noise_shape_range_and_seed() -> None:
    noise = perlin_noise((40, 70), (4, 8), np.random.default_rng(1), angle=0.6)
    assert noise.shape == (40, 70)
    assert noise.dtype == np.float64
    assert np.isfinite(noise).all()
    assert -1.5 < noise.min() < 0.0 < noise.max() < 1.5
    again = perlin_noise((40, 70), (4, 8), np.random.default_rng(1), angle=0.6)
    assert np.array_equal(noise, again)
    other = perlin_noise((40, 70), (4, 8), np.random.default_rng(2), angle=0.6)
    assert not np.array_equal(noise, other)
    with pytest.raises(ValueError, match="positive"):
        perlin_noise((40, 70), (0, 8), np.random.default_rng(1))


# --------------------------------------------------------------------------------------------
# Determinism, registry and input checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_anomaly(kind: str) -> None:
    image = IMAGES["textured"]
    first = insert_anomaly(image, kind, np.random.default_rng(11))
    second = insert_anomaly(image, kind, np.random.default_rng(11))
    other = insert_anomaly(image, kind, np.random.default_rng(12))
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.mask, second.mask)
    assert not np.array_equal(first.image, other.image)


def test_registry_names_the_four_kinds() -> None:
    assert set(ANOMALY_KINDS) == set(KINDS)
    assert ANOMALY_KINDS["perlin"] is perlin_blend


def test_insert_anomaly_rejects_unknown_kinds_and_options() -> None:
    image = IMAGES["textured"]
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        insert_anomaly(image, "smudge", np.random.default_rng(0))
    with pytest.raises(TypeError):
        insert_anomaly(image, "cutpaste", np.random.default_rng(0), scarr=True)
    _assert_contract(image, insert_anomaly(image, "cutpaste", np.random.default_rng(0), scar=True))


def test_bad_inputs_are_refused() -> None:
    image = IMAGES["textured"]
    with pytest.raises(TypeError, match="Generator"):
        blob(image, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        blob(image.astype(np.float32), np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        blob(image[..., 0], np.random.default_rng(0))
    with pytest.raises(SynthesisError, match="too small"):
        scratch(np.zeros((8, 64, 3), dtype=np.uint8), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# synthesize_dataset
# --------------------------------------------------------------------------------------------


def _write_normals(folder: Path, count: int, *, first_seed: int = 100) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"cell_{i:02d}.png"
        Image.fromarray(_textured(first_seed + i)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Path], list[Path], Path]:
    """Ten normal PNGs and one corrupt file; three train PNGs."""
    normals = _write_normals(tmp_path / "normals", 10)
    broken = tmp_path / "normals" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    train = _write_normals(tmp_path / "train_src", 3, first_seed=500)
    return [*normals, broken], train, broken


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_dataset_layout_counts_and_masks(
    inputs: tuple[list[Path], list[Path], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    normals, train, broken = inputs
    out = tmp_path / "synth"
    with caplog.at_level(logging.WARNING, logger="feddymem.data.generated.synth"):
        summary = synthesize_dataset(normals, out, seed=3, n_good=3, train=train)

    assert summary.n_good == 3
    assert summary.n_anomalous == 7  # the ten readable normals minus the three held out
    assert summary.per_kind == {"cutpaste": 2, "perlin": 2, "scratch": 2, "blob": 1}
    assert summary.n_train == 3
    assert summary.skipped == (broken,)
    assert summary.n_skipped == 1
    assert any("broken.png" in record.getMessage() for record in caplog.records)

    sources = {p.stem: p for p in normals if p != broken}
    good = sorted((out / "test" / "good").glob("*.png"))
    assert len(good) == 3
    for path in good:
        assert np.array_equal(_read(path), _read(sources[path.stem]))

    used = {p.stem for p in good}
    for kind, count in summary.per_kind.items():
        images = sorted((out / "test" / kind).glob("*.png"))
        masks = sorted((out / "ground_truth" / kind).glob("*.png"))
        assert len(images) == len(masks) == count
        for image_path in images:
            assert image_path.stem in sources and image_path.stem not in used
            used.add(image_path.stem)
            mask_path = out / "ground_truth" / kind / f"{image_path.stem}_mask.png"
            mask = _read(mask_path)
            original = _read(sources[image_path.stem])
            assert mask.dtype == np.uint8 and mask.shape == original.shape[:2]
            assert set(np.unique(mask)) == {0, 255}
            _assert_contract(original, Anomaly(image=_read(image_path), mask=mask == 255))
    assert used == set(sources)

    assert sorted(p.name for p in (out / "train" / "good").iterdir()) == [
        f"{p.stem}.png" for p in train
    ]
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["complete"] is True
    assert marker["settings"]["seed"] == 3
    assert marker["counts"]["anomalous"] == 7
    assert marker["counts"]["skipped"] == 1


def test_dataset_is_byte_identical_for_a_seed(
    inputs: tuple[list[Path], list[Path], Path], tmp_path: Path
) -> None:
    normals, train, _ = inputs
    synthesize_dataset(normals, tmp_path / "a", seed=5, train=train)
    synthesize_dataset(list(reversed(normals)), tmp_path / "b", seed=5, train=train)
    synthesize_dataset(normals, tmp_path / "c", seed=6, train=train)
    first, second, other = (_tree(tmp_path / name) for name in "abc")
    assert first == second
    assert first != other


def test_default_split_and_kind_subset(
    inputs: tuple[list[Path], list[Path], Path], tmp_path: Path
) -> None:
    normals, _, _ = inputs
    summary = synthesize_dataset(normals, tmp_path / "half", kinds=["scratch"])
    assert (summary.n_good, summary.n_anomalous) == (5, 5)  # 11 given: 5 held out, corrupt skipped
    assert summary.per_kind == {"scratch": 5}
    assert sorted(p.name for p in (tmp_path / "half" / "test").iterdir()) == ["good", "scratch"]
    summary = synthesize_dataset(normals, tmp_path / "few", n_anomalous=2)
    assert (summary.n_anomalous, summary.n_good) == (2, 8)  # the fixed count is served first
    summary = synthesize_dataset(normals, tmp_path / "some", n_good=4)
    assert (summary.n_good, summary.n_anomalous) == (4, 6)


def test_rerun_replaces_a_previous_output(
    inputs: tuple[list[Path], list[Path], Path], tmp_path: Path
) -> None:
    normals, _, _ = inputs
    out = tmp_path / "synth"
    synthesize_dataset(normals, out, seed=1, kinds=["blob"], n_good=2)
    synthesize_dataset(normals, out, seed=1, kinds=["perlin"], n_good=2)
    assert not (out / "test" / "blob").exists()
    assert len(list((out / "test" / "perlin").glob("*.png"))) == 8


def test_foreign_or_mixed_folders_are_refused(
    inputs: tuple[list[Path], list[Path], Path], tmp_path: Path
) -> None:
    normals, _, _ = inputs
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthesisError, match="not empty"):
        synthesize_dataset(normals, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    mixed = tmp_path / "mixed"
    synthesize_dataset(normals, mixed, kinds=["blob"])
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(SynthesisError, match=r"notes\.txt"):
        synthesize_dataset(normals, mixed)

    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(SynthesisError, match="not a folder"):
        synthesize_dataset(normals, a_file)


def test_bad_requests_are_refused(
    inputs: tuple[list[Path], list[Path], Path], tmp_path: Path
) -> None:
    normals, _, _ = inputs
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="exceeds"):
        synthesize_dataset(normals, out, n_good=6, n_anomalous=6)
    with pytest.raises(ValueError, match="unknown anomaly kinds"):
        synthesize_dataset(normals, out, kinds=["smudge"])
    with pytest.raises(ValueError, match="leakage"):
        synthesize_dataset(normals, out, train=[normals[0]])
    twin = tmp_path / "elsewhere" / normals[0].name
    twin.parent.mkdir()
    twin.write_bytes(normals[0].read_bytes())
    with pytest.raises(ValueError, match="stem"):
        synthesize_dataset([*normals, twin], out)
    assert not out.exists(), "a refused request must not create the output folder"
