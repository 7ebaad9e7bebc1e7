"""The FastAPI application: `create_app(settings)`; `service.app:app` for uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from sdpo_core.problem import ProblemSpec
from service import errors
from service.api import health, metrics, problems, ui
from service.queue import Queue
from service.settings import Settings, get_settings
from service.store import Store, connect

DESCRIPTION = """Solve one hard problem at a time by test-time self-distillation (SDPO).

Authenticate with `Authorization: Bearer <API key>` (keys come from `sdpo keys create`).
Every error has the body `{"error": {"code", "message", "field"}}`."""


def create_app(settings: Settings | None = None, *, redis_url: str | None = None) -> FastAPI:
    """Build the app. Redis is `redis_url`, else settings.redis_url, else 127.0.0.1:6379."""
    settings = settings or get_settings()
    settings.check()
    url = redis_url or settings.redis_url or "redis://127.0.0.1:6379/0"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(url)
        app.state.store = Store(redis, settings.key_prefix)
        for model in settings.models:
            try:
                await Queue(redis, settings.key_prefix, model).ensure_group()
            except OSError:  # Redis not up yet: workers create the group too
                pass
        yield
        await redis.aclose()

    app = FastAPI(
        title="sdpo-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(problems.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [(ProblemSpec, "validation")], ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def __getattr__(name: str) -> Any:  # `uvicorn service.app:app` builds it from the environment
    if name == "app":
        return create_app()
    raise AttributeError(name)
