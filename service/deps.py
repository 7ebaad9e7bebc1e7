"""FastAPI dependencies: settings, the Redis store, and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError
from service.settings import Settings, is_loopback
from service.sse import EventHub
from service.store import Store

LOCAL_TENANT = "local"

_bearer = HTTPBearer(auto_error=False, description="An API key from `sdpo keys create`.")


# Async on purpose: FastAPI runs a sync dependency in the thread pool, on every request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_hub(request: Request) -> EventHub:
    return request.app.state.hub


async def get_tenant(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant that owns the presented API key (401 otherwise).

    With SDPO_API_KEYS_REQUIRED=false on a loopback bind, a request without a key that
    arrived on a loopback socket belongs to the tenant `local`. (Settings and store come
    from app.state, not sub-dependencies: each dependency costs CPU on every request.)"""
    settings: Settings = request.app.state.settings
    if creds is None:
        server = request.scope.get("server") or ("", 0)
        if not settings.auth_enabled and is_loopback(str(server[0])):
            return LOCAL_TENANT
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = await request.app.state.keys.tenant(creds.credentials)
    if tenant is None:
        raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return tenant


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
TenantDep = Annotated[str, Depends(get_tenant)]
HubDep = Annotated[EventHub, Depends(get_hub)]
