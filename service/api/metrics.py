"""/metrics: Prometheus text, built from the counters every worker keeps in Redis, plus this
API process's own HTTP request metrics (prometheus_client objects, per process)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from service.deps import SettingsDep, StoreDep
from service.queue import Queue
from service.store import STATUSES

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


_HIST = re.compile(r"^h:(?P<name>[a-z_]+):(?P<part>le:(?P<le>[^:]+)|sum)$")
_HIST_DOCS = {
    "solve_seconds": "Wall time of a problem from start to its terminal status.",
    "step_seconds": "Wall time of one SDPO step.",
    "step_generate_seconds": "Step time spent generating attempts.",
    "step_verify_seconds": "Step time spent in the verifier.",
    "step_teacher_seconds": "Step time spent in the self-teacher's forward passes.",
    "step_student_seconds": "Step time spent in student forward/backward and the optimizer.",
    "adapter_swap_seconds": "Time to save and hot-swap the adapter into the engine.",
}


class _Snapshot:
    """A collector over numbers read from Redis just before rendering."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        yield from self.families


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(store: StoreDep, settings: SettingsDep) -> Response:
    stats = await store.stats()
    counts = await store.status_counts()
    workers = await store.live_workers(settings.heartbeat_timeout)
    fams: list = []

    g = GaugeMetricFamily("sdpo_problems", "Problems by status.", labels=["status"])
    for s in STATUSES:
        g.add_metric([s], counts.get(s, 0))
    fams.append(g)

    q = GaugeMetricFamily("sdpo_queue_depth", "Queue entries by model.", labels=["model", "state"])
    for model in settings.models:
        waiting, pending = await Queue(store.redis, store.prefix, model).depth()
        q.add_metric([model, "waiting"], waiting)
        q.add_metric([model, "pending"], pending)
    fams.append(q)

    w = GaugeMetricFamily("sdpo_workers_live", "Workers with a recent heartbeat.", labels=["model"])
    per_model: dict[str, int] = defaultdict(int)
    for info in workers:
        per_model[info.get("model", "")] += 1
    for model in sorted(set(settings.models) | set(per_model)):
        w.add_metric([model], per_model.get(model, 0))
    fams.append(w)

    for name, doc in (
        ("problems_created", "Problems submitted."),
        ("attempts", "Attempts generated (each counted once)."),
        ("verifier_runs", "Verifier runs."),
        ("steps", "SDPO steps taken."),
        ("attempts_passed", "Attempts that passed the verifier."),
    ):
        fams.append(CounterMetricFamily(f"sdpo_{name}", doc, value=stats.get(name, 0.0)))

    hist: dict[str, dict] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
    for field, value in stats.items():
        m = _HIST.match(field)
        if not m:
            continue
        if m["part"] == "sum":
            hist[m["name"]]["sum"] = value
        else:
            hist[m["name"]]["buckets"][m["le"]] = value
    for name, doc in _HIST_DOCS.items():
        h = hist.get(name, {"buckets": {}, "sum": 0.0})
        buckets = sorted(
            h["buckets"].items(), key=lambda kv: float("inf") if kv[0] == "+Inf" else float(kv[0])
        )
        if not buckets or buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", 0.0))
        fams.append(HistogramMetricFamily(f"sdpo_{name}", doc, buckets=buckets, sum_value=h["sum"]))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(fams))
    body = generate_latest(registry) + generate_latest(HTTP_REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
