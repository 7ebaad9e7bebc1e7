"""/ui: the live web dashboard (server-rendered pages; data comes from the REST API).

The pages carry no tenant data. Their script asks for the API key once, keeps it in the
browser's sessionStorage and calls `/v1` with `Authorization: Bearer`, following the SSE
stream with fetch streaming (EventSource cannot send headers), so the key never appears in
a URL and a tenant sees exactly what the REST API shows it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from service.api.problems import PROBLEM_ID
from service.api.suites import SUITE_ID
from service.errors import ApiError

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC_DIR = UI_DIR / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Cache buster for the static URLs (browsers keep the files for a day): their content hash.
ASSET_VERSION = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(STATIC_DIR.iterdir()) if p.suffix in STATIC_TYPES)
).hexdigest()[:12]

# Scripts and styles only from this origin: no inline code, no CDN, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=UI_DIR / "templates")


def _page(request: Request, template: str, **context: object) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"v": ASSET_VERSION, **context},
        headers=SECURITY_HEADERS,
    )


@router.get("", response_class=HTMLResponse)
async def problems_page(request: Request) -> HTMLResponse:
    """The caller's problems, and a form to submit one."""
    return _page(request, "problems.html", page="list")


@router.get("/", response_class=RedirectResponse)
async def problems_page_slash() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/problems/{problem_id}", response_class=HTMLResponse)
async def problem_page(
    request: Request, problem_id: Annotated[str, PathParam(pattern=PROBLEM_ID)]
) -> HTMLResponse:
    """One problem, live. Ownership is checked by the API calls the page makes."""
    return _page(request, "problem.html", page="problem", problem_id=problem_id)


@router.get("/suites/{suite_id}", response_class=HTMLResponse)
async def suite_page(
    request: Request, suite_id: Annotated[str, PathParam(pattern=SUITE_ID)]
) -> HTMLResponse:
    """One suite's discovery report, live."""
    return _page(request, "suite.html", page="suite", suite_id=suite_id)


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """The dashboard's script, stylesheet and the vendored Chart.js (no CDN)."""
    path = STATIC_DIR / name
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        raise ApiError(404, f"no static file {name}", code="not_found")
    return FileResponse(
        path,
        media_type=STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
