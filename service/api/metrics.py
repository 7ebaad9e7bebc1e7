"""/metrics of an API process: its own HTTP request metrics and submit/cancel counters
(prometheus_client objects, per process), and gauges read from Redis when scraped (queue
depth, problems queued and running, live workers), the same from every API process.

Workers count attempts, steps and their timings in their own processes and serve them on
their own port (service/worker_metrics.py); nothing is summed in Redis."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from service.deps import SettingsDep, StoreDep
from service.queue import Queue
from service.settings import Settings
from service.store import Store

router = APIRouter(tags=["metrics"])

# This process's HTTP metrics. `route` is the route template (bounded), never the raw path.
HTTP_REGISTRY = CollectorRegistry()
HTTP_REQUESTS = Counter(
    "sdpo_http_requests",
    "HTTP requests answered by this API process.",
    ["method", "route", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_SECONDS = Histogram(
    "sdpo_http_request_seconds",
    "Time to the response's first byte, by route (an event stream counts until it opens).",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=HTTP_REGISTRY,
)
PROBLEMS_CREATED = Counter(
    "sdpo_problems_created", "Problems this API process queued.", registry=HTTP_REGISTRY
)
CANCELS = Counter(
    "sdpo_api_cancels",
    "Cancels this API process accepted: `cancelled` (the problem was queued and is finished "
    "here) or `requested` (running: its worker finishes it).",
    ["outcome"],
    registry=HTTP_REGISTRY,
)


class HttpMetrics:
    """Pure ASGI middleware: counts each request and times it to the response start."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_timed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", None) or "(unmatched)"
                HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()


class RedisGauges:
    """A collector of gauges read from Redis just before a scrape: a few cheap reads
    (one SCARD, XINFO GROUPS per model, the live workers), no counters."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    @classmethod
    async def read(cls, store: Store, settings: Settings) -> RedisGauges:
        depth = {}
        models = settings.models or await store.served_models(settings.models_seen_seconds)
        for model in models:
            depth[model] = await Queue(store.redis, store.prefix, model).depth()
        queued = await store.redis.scard(store.key("queued"))
        workers = await store.live_workers(settings.heartbeat_timeout)

        problems = GaugeMetricFamily(
            "sdpo_problems",
            "Problems queued, and running (queue entries delivered to a worker, not yet done).",
            labels=["status"],
        )
        problems.add_metric(["queued"], queued)
        problems.add_metric(["running"], sum(pending for _, pending in depth.values()))
        q = GaugeMetricFamily(
            "sdpo_queue_depth", "Queue entries by model.", labels=["model", "state"]
        )
        for model, (waiting, pending) in depth.items():
            q.add_metric([model, "waiting"], waiting)
            q.add_metric([model, "pending"], pending)
        w = GaugeMetricFamily(
            "sdpo_workers_live", "Workers with a recent heartbeat.", labels=["model"]
        )
        per_model: dict[str, int] = defaultdict(int)
        for info in workers:
            per_model[info.get("model", "")] += 1
        for model in sorted(set(models) | set(per_model)):
            w.add_metric([model], per_model.get(model, 0))
        return cls([problems, q, w])

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    """This process's metrics, Redis gauges, and (local mode) the in-process worker's."""
    gauges = CollectorRegistry(auto_describe=False)
    gauges.register(await RedisGauges.read(store, settings))
    registries = [HTTP_REGISTRY, gauges, *getattr(request.app.state, "metric_registries", ())]
    body = b"".join(generate_latest(r) for r in registries)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
