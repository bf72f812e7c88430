"""The FastAPI app: scoring, the model, health, metrics, the feed and the operator's page.

`Service` holds the parts (model holder, micro-batcher, feed, metrics, optional folder
watcher); `create_app(service)` wires them to routes. The model is loaded before the app is
created (`Service.load`), so a service that cannot score does not start.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from feddymem.serve.batcher import MicroBatcher
from feddymem.serve.decode import BadImage, check_size, decode_bytes
from feddymem.serve.feed import Feed
from feddymem.serve.metrics import ServiceMetrics
from feddymem.serve.models import LoadedModel, ModelHolder
from feddymem.serve.scoring import Scored, overlay_image, png_bytes, resize, thumbnail_jpeg
from feddymem.serve.settings import ServeSettings
from feddymem.serve.upload import read_image_bytes

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


class Service:
    """The parts of one running service."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.feed = Feed()
        self.holder = ModelHolder(
            settings.model,
            weights=settings.weights,
            on_swap=self._swapped,
            on_failure=lambda _reason: self.metrics.swaps.labels(outcome="failed").inc(),
        )
        self.batcher = MicroBatcher(
            self.holder,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
        )
        self.stop = threading.Event()
        self._decode_slots = threading.BoundedSemaphore(4)  # decoded images held at once
        self._loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> LoadedModel:
        return self.holder.load_initial()

    def _swapped(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            self.metrics.swaps.labels(outcome="swapped").inc()
        self.metrics.set_version(old.version if old else None, new.version)

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.batcher.start()
        self.holder.start(self.stop)
        s = self.settings
        if s.watch_in is not None:
            from feddymem.serve.watch import FolderWatcher

            watcher = FolderWatcher(
                in_dir=s.watch_in,
                out_dir=s.watch_out or s.watch_in / "scored",
                score=self._score_from_thread,
                on_row=self._watch_row,
                max_bytes=s.max_bytes,
                max_pixels=s.max_pixels,
            )
            watcher.start(self.stop)

    async def shutdown(self) -> None:
        self.stop.set()
        await self.batcher.stop()

    # --- the folder watcher's path into the batcher ------------------------------------------
    def _score_from_thread(self, images: Any) -> list[Scored]:
        assert self._loop is not None
        futures = [
            asyncio.run_coroutine_threadsafe(self.batcher.submit(img, want_map=True), self._loop)
            for img in images
        ]
        return [f.result() for f in futures]

    def _watch_row(self, row: dict[str, Any], drawn: np.ndarray | None) -> None:
        if drawn is None:
            self.metrics.watch_files.labels(outcome="unreadable").inc()
            return
        self.metrics.watch_files.labels(outcome="scored").inc()
        self.metrics.decisions.labels(decision=row["decision"], source="watch").inc()
        self.feed.add(
            source="watch",
            name=row["name"],
            score=row["score"],
            threshold=row["threshold"],
            anomalous=row["decision"] == "anomalous",
            version=row["model_version"],
            thumb_jpeg=thumbnail_jpeg(drawn),
        )

    # --- one scoring request -----------------------------------------------------------------
    def _decode(self, data: bytes, want_map: bool) -> tuple[np.ndarray, np.ndarray | None, bytes]:
        """Pixels for the batch (already at the model's size), the original (for an overlay)
        and the feed's thumbnail; at most four requests hold decoded images at once."""
        s = self.settings
        with self._decode_slots:
            image = decode_bytes(data, max_bytes=s.max_bytes, max_pixels=s.max_pixels)
            small = resize(image, self.holder.current.image_hw)
            return small, image if want_map else None, thumbnail_jpeg(image)

    async def score(self, data: bytes, *, name: str, want_map: bool) -> dict[str, Any]:
        small, original, thumb = await run_in_threadpool(self._decode, data, want_map)
        del data
        result = await self.batcher.submit(small, want_map=want_map)
        decision = "anomalous" if result.anomalous else "normal"
        body: dict[str, Any] = {
            "name": name,
            "score": result.score,
            "threshold": result.threshold,
            "decision": decision,
            "anomalous": result.anomalous,
            "model_version": result.version,
        }
        if want_map:
            assert original is not None and result.amap is not None
            drawn = await run_in_threadpool(overlay_image, result, original)
            body["overlay_png"] = base64.b64encode(png_bytes(drawn)).decode()
            height, width = original.shape[:2]  # the feed's thumbnail: the picture, no legend
            thumb = await run_in_threadpool(thumbnail_jpeg, drawn[:height, :width])
        self.metrics.decisions.labels(decision=decision, source="http").inc()
        self.feed.add(
            source="http",
            name=name,
            score=result.score,
            threshold=result.threshold,
            anomalous=result.anomalous,
            version=result.version,
            thumb_jpeg=thumb,
        )
        return body

    def model_info(self) -> dict[str, Any]:
        model = self.holder.current
        return {
            "model_version": model.version,
            "loaded_at": model.loaded_at,
            **model.info,
            "last_error": self.holder.last_error,
            "history": list(self.holder.history),
        }


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def create_app(service: Service) -> FastAPI:
    """The HTTP routes of `service` (whose model is loaded)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.shutdown()

    app = FastAPI(title="feddymem serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    authorized = _bearer_check(service.settings.token)
    _add_unauthorized_handler(app)
    _add_request_counting(app, service.metrics)
    _add_probes(app, service)
    _add_model_routes(app, service, authorized)
    _add_score_route(app, service, authorized)
    _add_page(app)
    return app


def _bearer_check(token: str | None) -> Callable[[Request], None]:
    """The dependency that refuses a request without ``Authorization: Bearer <token>`` (none
    when `token` is None)."""

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise _Unauthorized()

    return authorized


def _add_unauthorized_handler(app: FastAPI) -> None:
    """401 with a ``WWW-Authenticate: Bearer`` header for a refused token."""

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_request: Request, _exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": "missing or wrong bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )


def _add_request_counting(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every response counted by endpoint (known paths, 'static', 'other') and status."""

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        path = request.url.path
        endpoint = (
            path if path in _ENDPOINTS else "static" if path.startswith("/static") else "other"
        )
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response


def _add_probes(app: FastAPI, service: Service) -> None:
    """/healthz (the process answers) and /readyz (a model is loaded), without a token."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        model = service.holder.current_
        if model is None:
            return _error(503, "no model loaded")
        return JSONResponse({"status": "ready", "model_version": model.version})


def _add_model_routes(
    app: FastAPI, service: Service, authorized: Callable[[Request], None]
) -> None:
    """/metrics, /v1/model and /v1/feed: what the service and its model are doing."""

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", dependencies=[Depends(authorized)])
    async def model() -> dict[str, Any]:
        return service.model_info()

    @app.get("/v1/feed", dependencies=[Depends(authorized)])
    async def feed(after: int = 0) -> dict[str, Any]:
        current = service.holder.current
        return {
            "entries": service.feed.since(after),
            "model": {"version": current.version, "loaded_at": current.loaded_at},
            "last_error": service.holder.last_error,
        }


def _add_score_route(app: FastAPI, service: Service, authorized: Callable[[Request], None]) -> None:
    """POST /v1/score: one image scored; a refused or failed request answers with the reason
    and the service keeps serving."""
    settings = service.settings
    metrics = service.metrics

    @app.post("/v1/score", dependencies=[Depends(authorized)])
    async def score(
        request: Request, heatmap: str | None = None, name: str = "upload"
    ) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            if heatmap not in (None, "png"):
                raise BadImage(400, f"heatmap={heatmap!r}: the only overlay format is png")
            data, filename = await read_image_bytes(request, max_bytes=settings.max_bytes)
            check_size(len(data), max_bytes=settings.max_bytes)
            body = await service.score(data, name=filename or name, want_map=heatmap == "png")
        except BadImage as err:
            log.info("refused a /v1/score request (%d): %s", err.status, err.reason)
            return _error(err.status, err.reason)
        except ClientDisconnect:
            return _error(400, "the client went away before the body was sent")
        except Exception as err:  # scoring failed: say so, keep serving
            log.exception("scoring failed")
            return _error(500, f"scoring failed: {type(err).__name__}")
        elapsed = time.perf_counter() - t0
        metrics.latency.observe(elapsed)
        body["server_ms"] = round(elapsed * 1000.0, 3)
        return JSONResponse(body)


def _add_page(app: FastAPI) -> None:
    """The operator's page at / and its files under /static."""

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


class _Unauthorized(Exception):
    pass


_ENDPOINTS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/feed", "/v1/score"}
)
