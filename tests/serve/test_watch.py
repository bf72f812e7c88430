"""The folder watcher: each image scored once when complete, none missed, none twice, and a
restart resumes from results.jsonl (the real `watchfiles` loop in a thread)."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from pathlib import Path

from tests.serve.servekit import Models

from feddymem.serve.models import ModelHolder
from feddymem.serve.scoring import score_batch
from feddymem.serve.watch import RESULTS, SCORES, FolderWatcher


def _watcher(models: Models, in_dir: Path, out_dir: Path, calls: list[int]) -> FolderWatcher:
    holder = ModelHolder(models.a)
    holder.load_initial()

    def score(images):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return score_batch(holder.current, images, want_maps=[True] * len(images))

    return FolderWatcher(in_dir=in_dir, out_dir=out_dir, score=score, rescan_s=0.2, give_up_s=1.0)


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def _wait_rows(out: Path, n: int, timeout: float = 60.0) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / RESULTS).is_file() and len(_rows(out)) >= n:
            break
        time.sleep(0.1)
    return _rows(out)


def test_once_and_only_once_then_resume(models: Models, tmp_path: Path) -> None:
    images = sorted((models.data / "test").rglob("*.png"))
    line, out = tmp_path / "line", tmp_path / "out"
    line.mkdir()
    shutil.copy(images[0], line / "before-start.png")  # there before the watcher: scored on start
    calls: list[int] = []
    watcher = _watcher(models, line, out, calls)
    stop = threading.Event()
    thread = watcher.start(stop)
    try:
        for i, src in enumerate(images[1:4]):  # written elsewhere, renamed in
            tmp = line / f".frame-{i}.png.part"
            tmp.write_bytes(src.read_bytes())
            tmp.rename(line / f"frame-{i}.png")
        # written in place, in two halves: read only once complete
        data = images[4].read_bytes()
        slow = line / "slow.png"
        with slow.open("wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(0.6)
            fh.write(data[len(data) // 2 :])
        (line / "notes.txt").write_text("not an image")  # not an image name: ignored
        (line / "junk.png").write_bytes(b"\x89PNG but not really")  # recorded as unreadable, once
        rows = _wait_rows(out, 6)
        time.sleep(1.5)  # a few more sweeps: nothing is scored again
        rows = _rows(out)
    finally:
        stop.set()
        thread.join(timeout=30)
    names = [r["name"] for r in rows]
    assert sorted(names) == sorted(
        ["before-start.png", "frame-0.png", "frame-1.png", "frame-2.png", "slow.png", "junk.png"]
    )
    by_name = {r["name"]: r for r in rows}
    assert by_name["junk.png"]["error"] and "score" not in by_name["junk.png"]
    slow_row = by_name["slow.png"]
    assert slow_row["error"] is None and slow_row["decision"] in {"normal", "anomalous"}
    for name, row in by_name.items():
        if name != "junk.png":
            assert (out / row["overlay"]).is_file()
    with (out / SCORES).open(newline="") as fh:
        assert sorted(r["name"] for r in csv.DictReader(fh)) == sorted(names)

    # restart: what is recorded is not scored again; new files are; a row that reached
    # results.jsonl but not scores.csv (a crash between the two) is added to the CSV
    with (out / RESULTS).open("a") as fh:
        fh.write(json.dumps({"name": "crashed.png", "score": 1.0, "error": None}) + "\n")
        fh.write('{"name": "torn')  # a line cut by the crash
    shutil.copy(images[5], line / "after-restart.png")
    calls.clear()
    watcher = _watcher(models, line, out, calls)
    assert watcher.sweep() == 1 and sum(calls) == 1
    assert watcher.sweep() == 0
    rows = _rows(out)
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)) == 8 and "after-restart.png" in names
    with (out / SCORES).open(newline="") as fh:
        csv_names = [r["name"] for r in csv.DictReader(fh)]
    assert sorted(csv_names) == sorted(names)
