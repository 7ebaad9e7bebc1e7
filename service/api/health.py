"""/healthz (the process is alive) and /readyz (Redis reachable, workers alive)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.deps import SettingsDep, StoreDep
from service.models import Health, Ready, WorkerInfo

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness",
    responses={503: {"model": Ready, "description": "Redis unreachable or no live worker."}},
)
async def readyz(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Counts for anyone; the worker list only with a valid API key (no problem ids)."""
    keyed = False
    try:
        await store.redis.ping()
        workers = await store.live_workers(settings.heartbeat_timeout)
        redis_ok = True
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and key:
            keyed = await store.tenant_for_key(key.strip()) is not None
    except (RedisError, OSError):
        redis_ok, workers = False, []
    ok = redis_ok and (bool(workers) or not settings.ready_requires_workers)
    infos = [
        WorkerInfo(
            name=w["name"],
            model=w.get("model"),
            host=w.get("host"),
            busy=bool(w.get("problem")),
            capacity=int(w["capacity"]) if w.get("capacity") else None,
            active_problems=int(w.get("active") or (1 if w.get("problem") else 0)),
            metrics_port=int(w["metrics_port"]) if w.get("metrics_port") else None,
        )
        for w in workers
    ]
    body = Ready(
        status="ready" if ok else "not_ready",
        redis=redis_ok,
        live_workers=len(infos),
        busy_workers=sum(w.busy for w in infos),
        workers=infos if keyed else None,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)
