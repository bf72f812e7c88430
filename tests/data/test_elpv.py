"""Exporting ELPV to the MVTec layout, on a small stand-in for the package data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from elpv_dataset import utils as elpv_utils

from feddymem.data.elpv import ELPV_FOLDERS, MANIFEST_NAME, export_elpv
from feddymem.data.images import DataError
from feddymem.data.layouts import scan_mvtec

N_CELLS = 48
RATINGS = (0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 0.0, 1.0)


class _FakeElpv:
    """48 small cells, alternating mono / poly, ratings cycling through RATINGS."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls += 1
        images = np.stack([np.full((12, 12), i, dtype=np.uint8) for i in range(N_CELLS)])
        probabilities = np.array([RATINGS[i % len(RATINGS)] for i in range(N_CELLS)])
        types = np.array(["mono" if i % 2 == 0 else "poly" for i in range(N_CELLS)])
        return images, probabilities, types


@pytest.fixture
def fake_elpv(monkeypatch: pytest.MonkeyPatch) -> _FakeElpv:
    fake = _FakeElpv()
    monkeypatch.setattr(elpv_utils, "load_dataset", fake)
    return fake


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_export_writes_mvtec_layout(tmp_path: Path, fake_elpv: _FakeElpv) -> None:
    out = tmp_path / "elpv"
    summary = export_elpv(out, cell_type="mono", seed=1, test_fraction=0.25)
    # Mono cells are the even indices; i % 6 gives the rating: 0, 4 -> 0; 2 -> 1/3.
    # Odd ratings (1, 3, 5) belong to poly cells only, so mono has no 2/3 and no 1.
    normal = [i for i in range(0, N_CELLS, 2) if RATINGS[i % 6] == 0.0]
    assert summary.train_good + summary.test_good == len(normal) == 16
    assert summary.test_good == 4
    assert summary.uncertain_p033 == 8
    assert summary.test_defect == summary.uncertain_p067 == 0
    assert not summary.reused
    for folder, count in summary.counts().items():
        assert len(_names(out / folder)) == count, folder

    written = _names(out / "train" / "good") + _names(out / "test" / "good")
    assert sorted(written) == [f"cell_{i:05d}.png" for i in normal]

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["settings"] == {"cell_type": "mono", "seed": 1, "test_fraction": 0.25}
    assert manifest["counts"] == summary.counts()
    assert not list(tmp_path.glob(".*partial*"))


def test_export_all_cells_and_scan(tmp_path: Path, fake_elpv: _FakeElpv) -> None:
    summary = export_elpv(tmp_path / "elpv", cell_type="all", seed=0, test_fraction=0.3)
    assert summary.counts() == {
        "train/good": 17,
        "test/good": 7,
        "test/defect": 8,
        "uncertain/p033": 8,
        "uncertain/p067": 8,
    }
    split = scan_mvtec(summary.out)
    assert len(split.train) == 17
    assert split.counts() == {"train": 17, "test/defect": 8, "test/good": 7}
    assert {s.path.name for s in split.test if s.label == 1} == {
        f"cell_{i:05d}.png" for i in range(5, N_CELLS, 6)
    }


def test_export_is_seeded(tmp_path: Path, fake_elpv: _FakeElpv) -> None:
    first = export_elpv(tmp_path / "a", cell_type="all", seed=7)
    again = export_elpv(tmp_path / "b", cell_type="all", seed=7)
    other = export_elpv(tmp_path / "c", cell_type="all", seed=8)
    held_out = [_names(s.out / "test" / "good") for s in (first, again, other)]
    assert held_out[0] == held_out[1]
    assert held_out[0] != held_out[2]


def test_export_is_idempotent(tmp_path: Path, fake_elpv: _FakeElpv) -> None:
    out = tmp_path / "elpv"
    first = export_elpv(out, seed=2)
    assert fake_elpv.calls == 1
    second = export_elpv(out, seed=2)
    assert fake_elpv.calls == 1  # nothing reloaded or rewritten
    assert second.reused
    assert second.counts() == first.counts()


def test_export_refuses_foreign_or_mismatched_folders(tmp_path: Path, fake_elpv: _FakeElpv) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match=r"mine: folder is not empty and holds no ELPV export"):
        export_elpv(foreign)
    assert (foreign / "thesis.tex").read_text() == "keep me"

    out = tmp_path / "elpv"
    export_elpv(out, seed=0)
    with pytest.raises(DataError, match="with settings"):
        export_elpv(out, seed=5)
    next((out / "train" / "good").glob("*.png")).unlink()
    with pytest.raises(DataError, match="incomplete ELPV export"):
        export_elpv(out, seed=0)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_elpv(empty).out == empty
    with pytest.raises(ValueError, match="cell_type"):
        export_elpv(tmp_path / "x", cell_type="amorphous")  # type: ignore[arg-type]


def test_folders_constant_matches_summary() -> None:
    assert ELPV_FOLDERS[0] == "train/good"
    assert len(ELPV_FOLDERS) == 5


def test_real_package_loader_has_documented_shapes(tmp_path: Path) -> None:
    # The package's own loader on its own data, restricted to one cell per (rating, type) so
    # the test takes well under a second; the full table is checked from its text.
    package_data = Path(elpv_utils.__file__).parent / "data"
    rows = (package_data / "labels.csv").read_text().split("\n")
    rows = [row for row in rows if row.strip()]
    assert len(rows) == 2624
    first_of_kind: dict[tuple[str, str], str] = {}
    for row in rows:
        _, rating, cell_type = row.split()
        first_of_kind.setdefault((rating, cell_type), row)
    assert len(first_of_kind) == 8  # 4 ratings x 2 cell types
    (tmp_path / "images").symlink_to(package_data / "images")
    subset = tmp_path / "labels.csv"
    subset.write_text("\n".join(first_of_kind.values()) + "\n")

    images, probabilities, types = elpv_utils.load_dataset(str(subset))
    assert images.shape == (8, 300, 300)
    assert images.dtype == np.uint8
    assert probabilities.shape == types.shape == (8,)
    np.testing.assert_allclose(sorted(set(probabilities.tolist())), [0, 1 / 3, 2 / 3, 1])
    assert set(types.tolist()) == {"mono", "poly"}
