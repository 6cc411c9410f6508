"""The web page at ``/`` (its files under ``/app/``): for people who do not use curl.

The page is static (``media_cleaner/web/static``: HTML, one script, one style sheet, no build step, no CDN)
and talks only to the public API, so it adds no way around the API's checks. It is served under a strict
Content-Security-Policy: scripts and styles only from this server (no inline script), no plugins, no framing,
requests only to this origin, and pictures and videos from this origin or from the page's own blobs (the
comparison draws the original, which never leaves the browser, beside the protected download).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"
PAGE_PREFIX = "/app"

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                           "frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def page() -> FileResponse:
    # no-cache: a new version of the page is picked up at once (it is small; the browser revalidates).
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


def install_page(app: FastAPI) -> None:
    """Serve the page and its files, each with :data:`PAGE_HEADERS`."""
    app.include_router(router)
    app.mount(PAGE_PREFIX, StaticFiles(directory=STATIC), name="page")
    app.add_middleware(PageHeaders)


class PageHeaders:
    """ASGI middleware adding :data:`PAGE_HEADERS` to the page's responses (the API's are left alone: Swagger
    UI needs its inline script). Plain ASGI rather than ``BaseHTTPMiddleware``, which would re-wrap every
    response stream of the API, downloads included."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path is None or not (path == "/" or path.startswith(PAGE_PREFIX + "/")):
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
