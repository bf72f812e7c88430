"""The ServerApps' shared scaffolding: results.json written whether the run completes or fails."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from feddymem.federation.server_base import RESULTS_FILE, failure, record_run, write_results


def _results(*, status: str, error: str | None) -> dict[str, Any]:
    return {"status": status, "error": error}


def test_record_run_writes_the_completed_document(tmp_path: Path) -> None:
    calls: list[str] = []
    document, path = record_run(
        tmp_path, lambda: calls.append("ran"), _results, what="test", logger=logging.getLogger()
    )
    assert calls == ["ran"]
    assert path == tmp_path / RESULTS_FILE
    assert document == {"status": "completed", "error": None}
    assert json.loads(path.read_text(encoding="utf-8")) == document


def test_record_run_writes_the_failure_and_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def work() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="boom"):
        record_run(tmp_path, work, _results, what="federation x", logger=logging.getLogger("t"))
    written = json.loads((tmp_path / RESULTS_FILE).read_text(encoding="utf-8"))
    assert written == {"status": "failed", "error": "RuntimeError: boom"}
    assert "federation x failed: boom" in caplog.text


def test_write_results_and_failure(tmp_path: Path) -> None:
    path = write_results(tmp_path, {"status": "failed", "error": failure(ValueError("x"))})
    assert json.loads(path.read_text(encoding="utf-8"))["error"] == "ValueError: x"
