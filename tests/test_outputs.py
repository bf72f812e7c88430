"""Output files published whole: a unique temporary file per writer, then an atomic rename."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddymem.outputs import OutputError, atomic_open, check_output_dir, check_output_file


def test_two_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with atomic_open(target, "wb") as first, atomic_open(target, "wb") as second:
        assert first.name != second.name  # each writer its own temporary file
        first.write(b"A" * 1000)
        second.write(b"B" * 10)
    # the last rename (the first writer, closed last) wins, whole; no mixture of the two,
    # no temporary file left
    assert target.read_bytes() == b"A" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_failed_writer_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_output_locations_are_checked(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="is not a folder"):
        check_output_file(tmp_path / "f" / "m.pt")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f")
    assert check_output_dir(tmp_path / "new" / "deep").is_dir()
    assert check_output_file(tmp_path / "a" / "m.pt").parent.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "f", "new"]  # no probe left


def test_pyproject_license_is_an_spdx_string_and_comments_sit_on_their_lines() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]
    assert project["license"] == "Apache-2.0"  # the table form is deprecated by setuptools
    lines = {line.split('"')[1].split(">")[0]: line for line in text.splitlines() if ">=" in line}
    assert "memory" in lines["psutil"] and "memory" not in lines["opacus"]
    assert "DP" in lines["opacus"]
