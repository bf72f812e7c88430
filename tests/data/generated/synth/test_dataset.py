"""synthesize_dataset: layout, counts, masks, determinism, reruns and refused folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.data.generated.synth.synthkit import assert_contract, textured

from feddymem.data.generated.synth.anomaly import Anomaly, SynthesisError
from feddymem.data.generated.synth.dataset import MARKER_NAME, synthesize_dataset


def _write_normals(folder: Path, count: int, *, first_seed: int = 100) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"cell_{i:02d}.png"
        Image.fromarray(textured(first_seed + i)).save(path)
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
    with caplog.at_level(logging.WARNING, logger="feddymem.data.generated.synth.dataset"):
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
            assert_contract(original, Anomaly(image=_read(image_path), mask=mask == 255))
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
