"""The model file: atomic writes, header checks, the registry of kinds, calibration splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from feddymem.data import Sample
from feddymem.detect.modelfile import (
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    read_state,
    write_state,
)
from feddymem.detect.registry import KINDS, load_detector
from feddymem.detect.threshold import map_floor, quantile_threshold, split_calibration


def test_write_state_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    write_state({"format": FORMAT, "version": FORMAT_VERSION, "x": 1}, path)
    path.write_bytes(path.read_bytes())  # readable as written

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        write_state({"bad": Boom()}, path)
    assert read_state(path)["x"] == 1  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_read_state_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        read_state(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="not a feddymem model file") as caught:
        read_state(tmp_path / "junk.pt")
    assert "weights_only" not in str(caught.value)  # not torch's advice to run pickled code
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a feddymem model file"):
        read_state(tmp_path / "other.pt")
    torch.save({"format": FORMAT, "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ModelFileError, match="format version 99"):
        read_state(tmp_path / "v99.pt")
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "kind": "nope"}, tmp_path / "k.pt")
    with pytest.raises(ModelFileError, match="unknown detector kind 'nope'"):
        load_detector(tmp_path / "k.pt")
    assert {"memory_bank", "patchcore", "gaussian", "autoencoder"} <= set(KINDS)


def test_thresholds_from_normals() -> None:
    samples = [Sample(path=Path(f"{i}.png"), label=0, defect="good") for i in range(20)]
    train, calib = split_calibration(samples, fraction=0.1, seed=3)
    assert len(calib) == 2 and not {s.path for s in train} & {s.path for s in calib}
    assert split_calibration(samples, fraction=0.1, seed=3) == (train, calib)  # seeded
    assert split_calibration(samples[:5], fraction=0.1, seed=3) == (samples[:5], [])
    scores = torch.arange(101, dtype=torch.float32).numpy()
    assert quantile_threshold(scores, quantile=0.99) == pytest.approx(99.0)
    assert map_floor(scores.reshape(1, 101)) == pytest.approx(50.0)
