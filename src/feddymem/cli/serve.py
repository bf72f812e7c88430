"""`feddymem serve` (the HTTP scoring service and its operator's page) and `feddymem watch`
(a folder of new images scored once each)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("feddymem.serve")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from feddymem.serve.app import Service, create_app
    from feddymem.serve.settings import ServeSettings

    settings = ServeSettings(
        model=args.model,
        weights=args.weights,
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get("FEDDYMEM_TOKEN") or None,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        watch_in=args.watch,
        watch_out=args.watch_out,
    )
    service = Service(settings)
    model = service.load()  # a model that cannot score: error, exit 2, before listening
    scheme = "https" if settings.tls else "http"
    print(
        f"serving model {model.version} ({model.info['kind']}, {model.info['backbone']}, "
        f"{model.image_hw[0]}x{model.image_hw[1]} px) on {scheme}://{settings.host}:{settings.port}/",
        flush=True,
    )
    uvicorn.run(
        create_app(service),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        log_level="warning" if args.verbose == 0 else "info",
        access_log=args.verbose > 1,
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=5,
    )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from feddymem.config import ConfigError
    from feddymem.serve.models import ModelHolder
    from feddymem.serve.scoring import score_batch
    from feddymem.serve.watch import FolderWatcher

    if not args.in_dir.is_dir():
        raise ConfigError(f"--in: not a folder: {args.in_dir}")
    holder = ModelHolder(args.model, weights=args.weights)
    model = holder.load_initial()
    watcher = FolderWatcher(
        in_dir=args.in_dir,
        out_dir=args.out,
        score=lambda images: score_batch(holder.current, images, want_maps=[True] * len(images)),
        on_row=lambda row, _drawn: print(
            f"{row['name']}: {row.get('decision') or 'unreadable'} "
            f"{row.get('score', '')} (model {row.get('model_version', '-')})",
            flush=True,
        ),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    holder.start(stop)
    print(
        f"watching {args.in_dir} with model {model.version}; rows -> {args.out}/results.jsonl "
        f"({len(watcher.done)} already recorded)",
        flush=True,
    )
    # scoring on a thread of its own, as in `serve`: on a loaded 2-core machine PyTorch ran
    # many times slower on the thread that loaded the model; the main thread waits for signals
    thread = threading.Thread(target=watcher.run, args=(stop,), name="folder-watch")
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model file from `fit` or `federate` (replaced in place: the new one is swapped in)",
    )
    p.add_argument("--weights", type=Path, default=None, help="local backbone weights, if needed")


def register(sub: Any) -> None:
    """Add serve and watch to the `feddymem` subcommands."""
    from feddymem.serve.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "serve",
        help="HTTP scoring service with an operator's page (hot-swaps the model file)",
        description="Score images over HTTP (POST /v1/score), with /v1/model, /healthz, "
        "/readyz, /metrics and the operator's page at /. Loopback only unless --host says "
        "otherwise, which then needs --token or TLS.",
    )
    _model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on /v1/* and /metrics (or set FEDDYMEM_TOKEN)",
    )
    p.add_argument("--ssl-certfile", type=Path, default=None, help="TLS certificate (PEM)")
    p.add_argument("--ssl-keyfile", type=Path, default=None, help="TLS private key (PEM)")
    p.add_argument(
        "--max-batch", type=int, default=16, help="images per batch (default: %(default)s)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="how long a batch waits for more requests (default: %(default)s ms)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="body size cap (default: %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="image size cap in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=int,
        default=128,
        help="connections served at once; more get 503 (default: %(default)s)",
    )
    p.add_argument("--watch", type=Path, default=None, help="also score new images in this folder")
    p.add_argument(
        "--watch-out",
        type=Path,
        default=None,
        help="rows and overlays of --watch (default: DIR/scored)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "watch",
        help="score each new image of a folder once (rows in results.jsonl / scores.csv, overlays)",
        description="Watch a folder; score each new image once when fully written; append its "
        "row to <out>/results.jsonl and <out>/scores.csv and write its overlay. A restart resumes "
        "from what is recorded.",
    )
    _model_options(p)
    p.add_argument(
        "--in", dest="in_dir", type=Path, required=True, help="folder the line writes into"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for rows and overlays")
    p.set_defaults(func=cmd_watch)
