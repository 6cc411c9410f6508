"""Typed errors: one per HTTP status the server uses, plus connection, task and wait failures."""
from __future__ import annotations

import email.utils
import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

import httpx

from media_cleaner_client.constants import CLI_NAME, UPLOAD_FIELDS



class MediaCleanerError(Exception):
    """Base of every error raised by this client.

    ``status_code`` is the HTTP status (``None`` when there was no response), ``detail`` the
    server's raw ``detail`` (a string, or FastAPI's list of validation errors), ``response`` the
    :class:`httpx.Response` (or ``None``). ``str(exc)`` is the server's detail made readable.
    """

    def __init__(self, message: str, *, status_code: Optional[int] = None, detail: Any = None,
                 response: Optional[httpx.Response] = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = message if detail is None else detail
        self.response = response


class BadRequest(MediaCleanerError):
    """400: the request was malformed (e.g. no file part)."""


class AuthenticationError(MediaCleanerError):
    """401: the API key is missing or wrong (pass ``api_key=`` or set MEDIA_CLEANER_API_KEY)."""


class NotFound(MediaCleanerError):
    """404: no such task (or endpoint)."""


class Conflict(MediaCleanerError):
    """409: the task is not in a state that allows this (e.g. download before it completed)."""


class Gone(MediaCleanerError):
    """410: the task's output has expired and was removed."""


class FileTooLarge(MediaCleanerError):
    """413: the upload exceeds the server's size or duration limit."""


class UnsupportedMedia(MediaCleanerError):
    """415: the uploaded file is not a video the server can read."""


class ValidationError(MediaCleanerError):
    """422: a parameter is out of range or malformed.

    ``detail`` keeps the server's raw detail; ``errors`` is FastAPI's list (empty when the detail
    was a plain string); ``fields`` names the offending parameters where they are known.
    """

    def __init__(self, message: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.errors: list = self.detail if isinstance(self.detail, list) else []
        if self.errors:
            self.fields: list[str] = [_error_field(e) for e in self.errors if _error_field(e)]
        else:  # a plain-string detail names the parameter in its text ("epsilon 0.5 is above ...")
            self.fields = [name for name in UPLOAD_FIELDS if re.search(rf"\b{name}\b", str(self.detail))]


class RateLimited(MediaCleanerError):
    """429 (too many requests) or 503 (queue full / busy). ``retry_after`` is in seconds or ``None``."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(MediaCleanerError):
    """5xx (other than 503): the server failed."""


class ConnectionFailed(MediaCleanerError):
    """The server could not be reached, or the connection broke. ``url`` is the server's base URL."""

    def __init__(self, message: str, *, url: str = "", **kwargs: Any):
        super().__init__(message, **kwargs)
        self.url = url


class TaskFailed(MediaCleanerError):
    """The task ended ``failed``. ``task`` is its JSON, ``error_message`` the server's reason."""

    def __init__(self, task: Mapping[str, Any]):
        self.task = dict(task)
        self.task_id = self.task.get("task_id")
        self.error_message = self.task.get("error_message") or "no reason given"
        super().__init__(f"task {self.task_id} failed: {self.error_message}", detail=self.error_message)


class TaskCancelled(MediaCleanerError):
    """The task ended ``cancelled``. ``task`` is its JSON."""

    def __init__(self, task: Mapping[str, Any]):
        self.task = dict(task)
        self.task_id = self.task.get("task_id")
        super().__init__(f"task {self.task_id} was cancelled")


class WaitTimeout(MediaCleanerError):
    """:meth:`MediaCleanerClient.wait` gave up. ``task`` is the last status seen (may be ``None``)."""

    def __init__(self, task_id: str, timeout: float, task: Optional[Mapping[str, Any]] = None):
        self.task_id = task_id
        self.timeout = timeout
        self.task = dict(task) if task else None
        state = ""
        if self.task:
            state = f" (still {self.task.get('status')}, {float(self.task.get('progress') or 0):.0f}%)"
        super().__init__(f"task {task_id} did not finish within {timeout:g}s{state}; "
                         f"resume with: {CLI_NAME} wait {task_id}")


_STATUS_ERRORS: dict[int, type[MediaCleanerError]] = {
    400: BadRequest, 401: AuthenticationError, 403: AuthenticationError, 404: NotFound,
    409: Conflict, 410: Gone, 413: FileTooLarge, 415: UnsupportedMedia, 422: ValidationError,
    429: RateLimited, 503: RateLimited,
}


def _error_field(error: Any) -> str:
    """The parameter a FastAPI validation error is about: its ``loc`` without body/query/path."""
    if not isinstance(error, Mapping):
        return ""
    loc = [str(p) for p in (error.get("loc") or []) if str(p) not in ("body", "query", "path", "header", "form")]
    return ".".join(loc)


def _readable_detail(detail: Any) -> str:
    """Turn a ``detail`` (string, FastAPI's error list, or other JSON) into one readable line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, Mapping):
                field, msg = _error_field(error), str(error.get("msg") or error.get("message") or error)
                parts.append(f"{field}: {msg}" if field else msg)
            else:
                parts.append(str(error))
        return "; ".join(parts) or "invalid request"
    if isinstance(detail, Mapping):
        for key in ("message", "msg", "error"):
            if isinstance(detail.get(key), str):
                return detail[key]
    return json.dumps(detail, ensure_ascii=False)


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds (it may be a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_from_response(response: httpx.Response) -> MediaCleanerError:
    """Build the typed exception for a non-2xx response (whose body has been read)."""
    status = response.status_code
    detail: Any = None
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
    except (ValueError, UnicodeDecodeError):
        text = response.text.strip() if response.content else ""
        detail = text[:500] if text else None
    if detail is None or detail == "":
        detail = f"HTTP {status} {response.reason_phrase}".strip()
    message = _readable_detail(detail)
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else MediaCleanerError
    kwargs: dict[str, Any] = dict(status_code=status, detail=detail, response=response)
    if cls is RateLimited:
        kwargs["retry_after"] = _parse_retry_after(response.headers.get("Retry-After"))
    return cls(message, **kwargs)


