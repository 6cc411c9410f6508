"""Builds the FastAPI application around one :class:`MediaCleanerService` (store + worker pool)."""
from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from media_cleaner import __version__
from media_cleaner.config import Settings
from media_cleaner.service.core import MediaCleanerService
from media_cleaner.api.routes import downloads, reports, system, tasks, uploads
from media_cleaner.api.deps import get_current_user
from media_cleaner.api.errors import error_responses, install_error_handlers
from media_cleaner.api.page import install_page

DESCRIPTION = """Media Cleaner returns a **protected** copy of a video: the faces in its frames carry a small
adversarial perturbation against face detectors (the face cloak), and the voice in its soundtrack an
adversarial mask against speaker encoders (the voice mask). Identifying metadata (GPS, device make and model,
dates) is removed; frame count, timestamps, orientation and sound are kept. How well it works, measured against
models the protection never saw, is in EVALUATION.md and in each task's report (`GET /report/{task_id}`).

**How to use it:** `POST /upload` a video → poll `GET /status/{task_id}` until `status` is `completed`
→ `GET /download/{task_id}`. Errors are JSON `{"detail": "…"}` that say what to fix. When the server has API
keys, send yours in `X-API-Key` (the Authorize button). People who do not use an API have the web page at `/`.
"""


def create_app(settings: Settings | None = None, service: MediaCleanerService | None = None) -> FastAPI:
    """The app; the service starts with the app's lifespan and stops (cleanly) with it."""
    service = service or MediaCleanerService(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    # Swagger UI from the installed package, not a CDN: a self-hosted server may have no internet.
    app = FastAPIOffline(title="Media Cleaner", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  openapi_tags=[{"name": "upload", "description": "Send a video to protect"},
                                {"name": "tasks", "description": "Follow, list and cancel tasks"},
                                {"name": "download", "description": "Fetch the protected video"},
                                {"name": "report", "description": "How well the protection worked, with a "
                                                                  "before/after sheet"},
                                {"name": "service", "description": "Queue statistics and health"}])
    app.state.service = service
    if service.settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=service.settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"], expose_headers=["Location"])
    install_error_handlers(app)
    for module in (uploads, tasks, downloads, reports, system):
        _document_key_errors(module.router)
        app.include_router(module.router)
    install_page(app)
    return app


def _document_key_errors(router: APIRouter) -> None:
    """Every operation that takes the caller's key lists its 401 (no or a wrong key) and 400 (a key in the URL)
    in the OpenAPI schema, so generated clients and schema checkers know them."""
    def needs_key(dependant) -> bool:
        return dependant.call is get_current_user or any(needs_key(d) for d in dependant.dependencies)

    for route in router.routes:
        if isinstance(route, APIRoute) and needs_key(route.dependant):
            for code, response in error_responses(400, 401).items():
                route.responses.setdefault(code, response)
