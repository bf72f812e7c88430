"""Scanning data-set layouts: MVTec AD and plain folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddymem.data.images import DataError
from feddymem.data.layouts import Sample, Split, scan, scan_folder, scan_mvtec

H, W = 32, 48


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, dtype=np.uint8)).save(path)
    return path


def _mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:6, 3:9] = 255
    Image.fromarray(mask).save(path)
    return path


def _mvtec_tree(root: Path) -> Path:
    """train/good: 4 images (+ junk); test/good: 2; crack: 3 (2 masks); scratch: 1 (mask)."""
    for i in range(4):
        _image(root / "train" / "good" / f"{i:03d}.png")
    (root / "train" / "good" / "README.txt").write_text("not an image")
    (root / "train" / "good" / ".hidden.png").write_bytes(b"")
    for i in range(2):
        _image(root / "test" / "good" / f"{i:03d}.jpg")
    for stem in ("c", "a", "b"):
        _image(root / "test" / "crack" / f"{stem}.png")
    _mask(root / "ground_truth" / "crack" / "a_mask.png")
    _mask(root / "ground_truth" / "crack" / "b.png")  # converted-set naming
    _image(root / "test" / "scratch" / "s1.JPG")
    _mask(root / "ground_truth" / "scratch" / "s1_mask.png")
    return root


def test_scan_mvtec_counts_order_and_masks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _mvtec_tree(tmp_path / "widgets")
    with caplog.at_level(logging.INFO, logger="feddymem.data.layouts"):
        split = scan_mvtec(root)

    assert split.name == "widgets"
    assert [s.path.name for s in split.train] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(s.label == 0 and s.defect == "good" for s in split.train)
    assert split.counts() == {"train": 4, "test/crack": 3, "test/good": 2, "test/scratch": 1}

    by_name = {s.path.name: s for s in split.test}
    assert by_name["a.png"].mask_path == root / "ground_truth" / "crack" / "a_mask.png"
    assert by_name["b.png"].mask_path == root / "ground_truth" / "crack" / "b.png"
    assert by_name["c.png"].mask_path is None
    assert by_name["s1.JPG"].mask_path == root / "ground_truth" / "scratch" / "s1_mask.png"
    assert by_name["000.jpg"].label == 0
    assert by_name["a.png"].label == 1
    assert by_name["a.png"].defect == "crack"
    assert {s.source for s in split.train + split.test} == {"widgets"}
    # Sorted by defect folder, then by file name.
    assert [s.path.name for s in split.test] == [
        "a.png", "b.png", "c.png", "000.jpg", "001.jpg", "s1.JPG",
    ]  # fmt: skip
    assert "1 of 4 anomalous test images have no mask" in caplog.text
    assert scan_mvtec(root) == split  # deterministic


def test_scan_mvtec_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: data-set root not found"):
        scan_mvtec(tmp_path / "nowhere")

    root = tmp_path / "set"
    (root / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/good: folder of normal training images"):
        scan_mvtec(root)

    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"train/good: no image files"):
        scan_mvtec(root)


def test_scan_detects_mvtec_and_explains_otherwise(tmp_path: Path) -> None:
    root = _mvtec_tree(tmp_path / "collection" / "widgets")
    assert scan(root) == scan_mvtec(root)
    with pytest.raises(DataError, match="MVTec categories widgets"):
        scan(root.parent)
    plain = tmp_path / "plain"
    _image(plain / "x.png")
    with pytest.raises(DataError, match=r"layout not recognised.*scan_folder"):
        scan(plain)


def test_split_with_source_and_train_check(tmp_path: Path) -> None:
    split = scan_mvtec(_mvtec_tree(tmp_path / "widgets"))
    renamed = split.with_source("site-a")
    assert renamed.name == "site-a"
    assert {s.source for s in renamed.train + renamed.test} == {"site-a"}
    assert [s.path for s in renamed.test] == [s.path for s in split.test]

    bad = Sample(path=tmp_path / "x.png", label=1, defect="crack")
    with pytest.raises(DataError, match="normal samples only"):
        Split(name="bad", train=(bad,), test=())
    with pytest.raises(DataError, match="label must be 0"):
        Sample(path=tmp_path / "x.png", label=2, defect="crack")


def _folder_set(root: Path, n_normal: int = 10) -> tuple[Path, Path, Path]:
    normal = root / "normal"
    abnormal = root / "abnormal"
    masks = root / "masks"
    for i in range(n_normal):
        _image(normal / f"n{i:02d}.png")
    for stem in ("d0", "d1", "d2"):
        _image(abnormal / f"{stem}.png")
    _mask(masks / "d0_mask.png")
    _mask(masks / "d1.bmp")
    return normal, abnormal, masks


def test_scan_folder_seeded_split(tmp_path: Path) -> None:
    normal, abnormal, masks = _folder_set(tmp_path / "parts")
    split = scan_folder(normal, abnormal_dir=abnormal, mask_dir=masks, test_fraction=0.3, seed=3)
    assert split.name == "parts"
    assert len(split.train) == 7
    test_normal = [s for s in split.test if s.label == 0]
    assert len(test_normal) == 3
    names = {s.path.name for s in split.train} | {s.path.name for s in test_normal}
    assert names == {f"n{i:02d}.png" for i in range(10)}
    assert not {s.path for s in split.train} & {s.path for s in test_normal}
    assert [s.path.name for s in split.train] == sorted(s.path.name for s in split.train)

    again = scan_folder(normal, abnormal_dir=abnormal, mask_dir=masks, test_fraction=0.3, seed=3)
    assert again == split
    other = scan_folder(normal, test_fraction=0.3, seed=4)
    assert {s.path for s in other.train} != {s.path for s in split.train}

    anomalous = {s.path.name: s for s in split.test if s.label == 1}
    assert anomalous["d0.png"].mask_path == masks / "d0_mask.png"
    assert anomalous["d1.png"].mask_path == masks / "d1.bmp"
    assert anomalous["d2.png"].mask_path is None
    assert anomalous["d0.png"].defect == "abnormal"


def test_scan_folder_errors(tmp_path: Path) -> None:
    normal, _, _ = _folder_set(tmp_path / "parts", n_normal=2)
    with pytest.raises(DataError, match=r"missing: folder of normal images not found"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(DataError, match=r"gone: folder of anomalous images not found"):
        scan_folder(normal, abnormal_dir=tmp_path / "gone")
    with pytest.raises(DataError, match="leave none for training"):
        scan_folder(normal, test_fraction=0.9)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no image files"):
        scan_folder(empty)
    split = scan_folder(normal, test_fraction=0.0)
    assert len(split.train) == 2
    assert split.test == ()
