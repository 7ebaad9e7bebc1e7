"""The FastAPI application: `create_app(settings)`; `service.app:app` for uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from pydantic.json_schema import models_json_schema

from sdpo_core.problem import ProblemSpec
from service import errors
from service.api import health, metrics, problems, suites, ui
from service.api.suites import SuiteSubmit
from service.keycache import KeyCache
from service.models import STORED_SPEC_MARK
from service.queue import Queue
from service.settings import Settings, get_settings
from service.sse import EventHub
from service.store import Store, connect

# Swagger UI and ReDoc, served from this process (no CDN: the docs work on closed networks).
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"

DESCRIPTION = """Solve one hard problem at a time by test-time self-distillation (SDPO).

Authenticate with `Authorization: Bearer <API key>` (keys come from `sdpo keys create`).
Every error has the body `{"error": {"code", "message", "field"}}`."""


def create_app(
    settings: Settings | None = None,
    *,
    redis_url: str | None = None,
    metric_registries: Sequence[CollectorRegistry] = (),
) -> FastAPI:
    """Build the app. Redis is `redis_url`, else settings.redis_url, else 127.0.0.1:6379.
    `metric_registries` are served on /metrics too (local mode: the in-process worker's)."""
    settings = settings or get_settings()
    settings.check()
    url = redis_url or settings.redis_url or "redis://127.0.0.1:6379/0"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(url)
        app.state.store = store = Store(
            redis,
            settings.key_prefix,
            retention_s=settings.retention_seconds,
            events_maxlen=settings.events_maxlen,
        )
        app.state.hub = EventHub(store, settings.sse_heartbeat_seconds)
        app.state.keys = keys = KeyCache(store)
        keys.start()
        try:
            for model in settings.models:
                await Queue(redis, settings.key_prefix, model).ensure_group()
            await store.drop_obsolete()
        except OSError:  # Redis not up yet: workers create the groups too
            pass
        yield
        await keys.stop()
        await redis.aclose()

    app = FastAPI(
        title="sdpo-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metric_registries = list(metric_registries)
    app.add_middleware(metrics.HttpMetrics)
    errors.install(app)
    app.include_router(problems.router)
    app.include_router(suites.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)
    _local_docs(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [(ProblemSpec, "validation"), (SuiteSubmit, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = schema = _link_stored_specs(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _link_stored_specs(node: Any) -> Any:
    """Replace each schema marked STORED_SPEC_MARK by a reference to ProblemSpec."""
    if isinstance(node, dict):
        if node.get(STORED_SPEC_MARK):
            return {"$ref": "#/components/schemas/ProblemSpec"}
        return {k: _link_stored_specs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_link_stored_specs(v) for v in node]
    return node


def _local_docs(app: FastAPI) -> None:
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )


def __getattr__(name: str) -> Any:  # `uvicorn service.app:app` builds it from the environment
    if name == "app":
        return create_app()
    raise AttributeError(name)
