"""What `feddymem federate` / `demo` tell a first-day user besides the metrics."""

from __future__ import annotations

from pathlib import Path

from feddymem.cli.federate import feature_cache_note


def test_the_feature_cache_is_located_sized_and_clearable(tmp_path: Path) -> None:
    cache = tmp_path / "clients" / "feature-cache"
    cache.mkdir(parents=True)
    (cache / "abc.pt").write_bytes(b"\0" * 3_000_000)
    note = feature_cache_note(tmp_path)
    assert str(cache) in note and "(3 MB)" in note and f"rm -r {cache}" in note
