"""Every error leaves the API as JSON ``{"detail": ...}`` with the right status, never a stack trace."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from media_cleaner.service.store.base import StoreUnavailable

log = logging.getLogger("media_cleaner.api")

# Shared OpenAPI descriptions of error answers, so /docs lists them for each operation.
ERROR_RESPONSES = {
    400: {"description": "Bad request (e.g. an empty file)"},
    404: {"description": "No such task"},
    409: {"description": "The task is not in a state that allows this"},
    410: {"description": "The file is gone (expired or deleted)"},
    413: {"description": "Upload larger than the size limit"},
    415: {"description": "Not a video this server can read"},
    422: {"description": "A parameter is out of range or malformed; detail names it"},
    401: {"description": "An API key is needed (X-API-Key) or the one sent is not valid"},
    403: {"description": "Not allowed for this API key"},
    429: {"description": "The queue is full; retry after Retry-After seconds"},
    503: {"description": "The shared task store cannot be reached just now; retry after Retry-After seconds"},
    507: {"description": "The server is low on disk space"},
}


def error_responses(*codes: int) -> dict:
    from media_cleaner.service.tasks import ErrorBody
    return {code: {**ERROR_RESPONSES[code], "model": ErrorBody} for code in codes}


def validation_message(errors: list[dict]) -> str:
    """FastAPI's list of validation errors as one sentence that names each field, e.g. "limit must be less
    than or equal to 500 (got '999')"."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "header", "body")]
        field = ".".join(location) or "the request"
        message = str(error.get("msg") or "is not valid")
        if message.startswith("Input should be "):   # pydantic's wording: "Input should be a valid integer"
            message = "must be " + message.removeprefix("Input should be ")
        else:
            message = ": " + message[0].lower() + message[1:]
        value = error.get("input")
        got = f" (got {value!r})" if isinstance(value, (str, int, float)) else ""
        parts.append(f"{field} {message}{got}".replace(" : ", ": "))
    return "; ".join(parts) or "The request is not valid."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One error shape everywhere: detail is a string, as for every other error.
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # A shared store restarting: nothing was accepted or changed, so the client may simply try again.
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "The task store cannot be reached just now (it may be restarting); nothing "
                                       "was changed. Please try again in a few seconds."},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "The server hit an unexpected error; it is logged in "
                                       "server_logs/server.log. Please try again."}, status_code=500)
