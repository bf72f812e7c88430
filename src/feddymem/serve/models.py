"""The model serving now, and its replacement when the model file changes.

`ModelHolder.current` is one `LoadedModel` (detector, version, description), replaced as a
whole: a batch takes `current` once when it starts and finishes on it, so a swap happens
between batches and each response names the model that scored it. A background thread
watches the model file's folder (`watchfiles`, plus a periodic look at the file's identity);
when the file is replaced (written to a temporary file, then renamed over the old one), the
new file is loaded and tried on one image first. A file that does not load leaves the old model
serving; the failure is logged and kept in `last_error` for `/v1/model`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from feddymem.detect.base import Detector
from feddymem.detect.modelfile import ModelFileError, state_from_bytes
from feddymem.detect.registry import detector_from_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A detector ready to score, with what `/v1/model` says about it."""

    detector: Detector
    version: str  # the first 12 hex digits of the file's SHA-256
    info: dict[str, Any]
    loaded_at: float  # Unix time

    @property
    def image_hw(self) -> tuple[int, int]:
        assert self.detector.image_hw_ is not None
        return self.detector.image_hw_

    @property
    def threshold(self) -> float:
        assert self.detector.threshold_ is not None
        return float(self.detector.threshold_)


def _describe(detector: Detector, state: dict[str, Any], path: Path) -> dict[str, Any]:
    memory = getattr(detector, "memory_", None)
    return {
        "kind": detector.kind,
        "backbone": detector.config.backbone,
        "image_hw": list(detector.image_hw_ or ()),
        "memory_items": int(memory.shape[0]) if isinstance(memory, torch.Tensor) else None,
        "threshold": detector.threshold_,
        "source": state.get("provenance") or {"source": "unknown (written before provenance)"},
        "path": str(path),
    }


def load_model(path: Path, *, weights: Path | None = None) -> LoadedModel:
    """Read, check, build and try a model file (one image of zeros through `predict`).

    Raises `ModelFileError` (or the backbone's error) for a file that cannot serve.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read the model file ({err})") from err
    state = state_from_bytes(data, where=path)
    detector = detector_from_state(state, weights=weights, where=str(path))
    if detector.threshold_ is None:
        raise ModelFileError(f"{path}: the model has no threshold (fit it on normal images)")
    assert detector.image_hw_ is not None
    detector.predict(torch.zeros((1, 3, *detector.image_hw_)))  # builds the backbone, tries it
    return LoadedModel(
        detector=detector,
        version=hashlib.sha256(data).hexdigest()[:12],
        info=_describe(detector, state, path),
        loaded_at=time.time(),
    )


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class ModelHolder:
    """The serving model and its swaps; `on_swap(old, new)` is told of each one."""

    path: Path
    weights: Path | None = None
    on_swap: Callable[[LoadedModel | None, LoadedModel], None] | None = None
    on_failure: Callable[[str], None] | None = None
    poll_s: float = 1.0
    current_: LoadedModel | None = None
    last_error: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    _seen: tuple[int, int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def current(self) -> LoadedModel:
        model = self.current_
        if model is None:
            raise RuntimeError("no model loaded")
        return model

    def load_initial(self) -> LoadedModel:
        """Load the model file once; its errors go to the caller (the service does not start)."""
        self._seen = _identity(self.path)
        model = load_model(self.path, weights=self.weights)
        self._install(model)
        return model

    def _install(self, model: LoadedModel) -> None:
        old, self.current_ = self.current_, model
        self.history.append({"version": model.version, "loaded_at": model.loaded_at})
        del self.history[:-20]
        if self.on_swap is not None:
            self.on_swap(old, model)

    def check(self) -> bool:
        """Load the file if it changed since last seen; True when the model was swapped."""
        with self._lock:
            seen = _identity(self.path)
            if seen is None or seen == self._seen:
                return False
            self._seen = seen
            try:
                model = load_model(self.path, weights=self.weights)
            except Exception as err:  # any failure keeps the old model serving
                reason = f"{type(err).__name__}: {err}"
                self.last_error = {"at": time.time(), "error": reason}
                log.error("new model file not loaded, the old model keeps serving: %s", reason)
                if self.on_failure is not None:
                    self.on_failure(reason)
                return False
            if self.current_ is not None and model.version == self.current_.version:
                return False  # same content rewritten
            self.last_error = None
            old = self.current_
            self._install(model)
            log.info(
                "model swapped: %s -> %s (%s)",
                old.version if old else None,
                model.version,
                model.info["source"],
            )
            return True

    def watch(self, stop: threading.Event) -> None:
        """Until `stop`: check the file on every change in its folder, and every `poll_s`."""
        from watchfiles import watch

        name = self.path.name
        for _ in watch(
            self.path.parent,
            watch_filter=lambda _change, p: Path(p).name == name,
            stop_event=stop,
            rust_timeout=int(self.poll_s * 1000),
            yield_on_timeout=True,
            debounce=50,
            step=20,
        ):
            self.check()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.watch, args=(stop,), name="model-watch", daemon=True)
        thread.start()
        return thread
