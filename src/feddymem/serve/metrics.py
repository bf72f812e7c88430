"""The service's Prometheus metrics (`prometheus-client`, its own registry): requests by
endpoint and status, scoring latency, batch sizes, decisions, model swaps and the version
serving, and the folder watcher's files."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Every metric of one service instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "feddymem_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "feddymem_score_seconds",
            "server-side time of a /v1/score request (decode, queue, score)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "feddymem_batch_size",
            "images per scored batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.decisions = Counter(
            "feddymem_decisions",
            "scored images by decision and source",
            ["decision", "source"],
            registry=r,
        )
        self.swaps = Counter(
            "feddymem_model_swaps", "model file changes by outcome", ["outcome"], registry=r
        )
        self.model = Gauge(
            "feddymem_model_info", "1 for the model version serving", ["version"], registry=r
        )
        self.watch_files = Counter(
            "feddymem_watch_files",
            "files handled by the folder watcher by outcome",
            ["outcome"],
            registry=r,
        )

    def set_version(self, old: str | None, new: str) -> None:
        if old is not None:
            self.model.remove(old)
        self.model.labels(version=new).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
