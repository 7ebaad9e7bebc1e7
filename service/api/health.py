"""/healthz (the process is alive) and /readyz (Redis reachable, workers alive)."""

from __future__ import annotations

from fastapi import APIRouter
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
async def readyz(store: StoreDep, settings: SettingsDep) -> JSONResponse:
    try:
        await store.redis.ping()
        workers = await store.live_workers(settings.heartbeat_timeout)
        redis_ok = True
    except (RedisError, OSError):
        redis_ok, workers = False, []
    ok = redis_ok and (bool(workers) or not settings.ready_requires_workers)
    infos = [
        WorkerInfo(**{k: w.get(k) for k in ("name", "model", "host", "problem")}) for w in workers
    ]
    body = Ready(status="ready" if ok else "not_ready", redis=redis_ok, workers=infos)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)
