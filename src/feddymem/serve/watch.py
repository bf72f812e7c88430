"""The folder watcher: each new image in a folder scored once, when fully written.

A line that drops files into a folder gets, per image, a row in `<out>/results.jsonl` and
`<out>/scores.csv` and an overlay `<out>/<stem>_overlay.png` (as `predict` draws it, with its legend).

- Once: a file is known by its name; the names recorded in `results.jsonl` are never scored
  again, so a restart resumes where the last run stopped (rows that reached `results.jsonl`
  but not `scores.csv` before a crash are added to the CSV on start).
- None missed: besides `watchfiles`' change events, the folder is listed again at every event
  and at least every `rescan_s`, so a dropped event only delays a file.
- Fully written: hidden files and temporary names (`.tmp`, `.part`, `.partial`, `.crdownload`,
  `~`) are ignored (write elsewhere or under such a name, then rename: the rename is atomic);
  a file is read only if its size and time stamp are the same before and after the read, and
  a file that is truncated is retried until it has not changed for `give_up_s`, then recorded
  as unreadable (once, with the reason).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feddymem.data.layouts import IMAGE_EXTENSIONS
from feddymem.serve.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, BadImage, decode_bytes
from feddymem.serve.scoring import Scored, overlay_image, png_bytes

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
SCORES = "scores.csv"
CSV_FIELDS = ("name", "score", "threshold", "decision", "model_version", "overlay", "error")
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~", ".swp")

ScoreFn = Callable[[Sequence[np.ndarray]], list[Scored]]
RowFn = Callable[[dict[str, Any], np.ndarray | None], None]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def is_candidate(name: str) -> bool:
    """An image file name the watcher takes (not hidden, not a temporary name)."""
    low = name.lower()
    return (
        not name.startswith(".")
        and not low.endswith(_TEMP_SUFFIXES)
        and Path(low).suffix in IMAGE_EXTENSIONS
    )


@dataclass
class FolderWatcher:
    """Scores the new images of `in_dir` with `score` (a batch of pixels -> results)."""

    in_dir: Path
    out_dir: Path
    score: ScoreFn
    on_row: RowFn | None = None
    max_batch: int = 8
    rescan_s: float = 1.0
    give_up_s: float = 10.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    done: set[str] = field(default_factory=set)
    _waiting: dict[str, tuple[tuple[int, int], float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.done = self._recorded()

    # --- the record --------------------------------------------------------------------------
    def _recorded(self) -> set[str]:
        """Names in results.jsonl (a torn last line from a crash is dropped); scores.csv gets
        any row it is missing."""
        results = self.out_dir / RESULTS
        rows: list[dict[str, Any]] = []
        if results.is_file():
            text = results.read_text()
            lines = text.splitlines()
            if text and not text.endswith("\n"):
                log.warning("%s: dropping a torn last line", results)
                lines = lines[:-1]
                results.write_text("".join(line + "\n" for line in lines))
            for line in lines:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s: skipping an unreadable line", results)
        names = {str(r["name"]) for r in rows if "name" in r}
        in_csv: set[str] = set()
        scores = self.out_dir / SCORES
        if scores.is_file():
            with scores.open(newline="") as fh:
                in_csv = {r["name"] for r in csv.DictReader(fh) if r.get("name")}
        missing = [r for r in rows if r.get("name") not in in_csv]
        if missing or not scores.is_file():
            self._append_csv(missing)
        return names

    def _append_csv(self, rows: Sequence[dict[str, Any]]) -> None:
        scores = self.out_dir / SCORES
        new = not scores.is_file() or scores.stat().st_size == 0
        with scores.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _record(self, row: dict[str, Any]) -> None:
        with (self.out_dir / RESULTS).open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        self._append_csv([row])
        self.done.add(row["name"])

    # --- one sweep ---------------------------------------------------------------------------
    def pending(self) -> list[Path]:
        """Images in `in_dir` not yet recorded, in name order."""
        try:
            names = sorted(e.name for e in os.scandir(self.in_dir) if e.is_file())
        except OSError as err:
            log.error("cannot list %s: %s", self.in_dir, err)
            return []
        return [self.in_dir / n for n in names if n not in self.done and is_candidate(n)]

    def _read(self, path: Path) -> np.ndarray | None:
        """The file's pixels if it is complete; None to look again later (rows for files that
        stay unreadable are written here)."""
        before = _identity(path)
        if before is None:
            return None  # gone
        try:
            data = path.read_bytes()
            pixels = decode_bytes(
                data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, name=path.name
            )
            error = None
        except (OSError, BadImage) as err:
            pixels, error = None, str(err)
        if _identity(path) != before:
            return None  # still being written
        if pixels is not None:
            self._waiting.pop(path.name, None)
            return pixels
        first = self._waiting.setdefault(path.name, (before, time.monotonic()))
        if first[0] != before:
            self._waiting[path.name] = (before, time.monotonic())
        elif time.monotonic() - first[1] >= self.give_up_s:
            log.warning("%s: unreadable, recorded and skipped: %s", path, error)
            self._waiting.pop(path.name, None)
            row = {"name": path.name, "error": error, "recorded_at": time.time()}
            self._record(row)
            if self.on_row is not None:
                self.on_row(row, None)
        return None

    def sweep(self) -> int:
        """Score every complete pending image; returns how many rows were written."""
        written = 0
        ready: list[tuple[Path, np.ndarray]] = []
        for path in self.pending():
            pixels = self._read(path)
            if pixels is not None:
                ready.append((path, pixels))
            if len(ready) == self.max_batch:
                written += self._score(ready)
                ready = []
        if ready:
            written += self._score(ready)
        return written

    def _score(self, ready: list[tuple[Path, np.ndarray]]) -> int:
        results = self.score([pixels for _, pixels in ready])
        for (path, pixels), res in zip(ready, results, strict=True):
            drawn = overlay_image(res, pixels)
            name = f"{path.stem}_overlay.png"
            tmp = self.out_dir / f".{name}.tmp"
            tmp.write_bytes(png_bytes(drawn))
            tmp.replace(self.out_dir / name)
            row = {
                "name": path.name,
                "score": round(res.score, 6),
                "threshold": round(res.threshold, 6),
                "decision": "anomalous" if res.anomalous else "normal",
                "model_version": res.version,
                "overlay": name,
                "error": None,
                "recorded_at": time.time(),
            }
            self._record(row)
            if self.on_row is not None:
                self.on_row(row, drawn[: pixels.shape[0], : pixels.shape[1]])  # legend left off
        return len(ready)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Sweep now (resume), then on every change in `in_dir` and every `rescan_s`."""
        from watchfiles import watch

        log.info("watching %s (%d file(s) already recorded)", self.in_dir, len(self.done))
        self._safe_sweep()
        for _ in watch(
            self.in_dir,
            stop_event=stop,
            rust_timeout=int(self.rescan_s * 1000),
            yield_on_timeout=True,
            debounce=200,
            step=10,
            recursive=False,
        ):
            self._safe_sweep()

    def _safe_sweep(self) -> None:
        try:
            self.sweep()
        except Exception:  # one bad sweep (a scoring error) must not stop the watcher
            log.exception("folder sweep failed; retrying on the next change")

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="folder-watch", daemon=True)
        thread.start()
        return thread
