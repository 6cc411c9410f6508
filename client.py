#!/usr/bin/env python3
"""Media Cleaner client: a library and a command line for the Media Cleaner HTTP API.

The service adds an adversarial perturbation to videos so that face detectors and voice-cloning
models get less out of them. This module talks to a running server (start one with
``python run_server.py``); it needs only ``httpx``.

Library::

    from client import MediaCleanerClient, TaskFailed

    with MediaCleanerClient("http://127.0.0.1:8000", api_key=None) as mc:
        # one call: upload, wait for processing, download
        out = mc.protect("in.mp4", "out.mp4", epsilon=0.12, audio_level="weak")

        # or step by step
        task = mc.upload("in.mp4", epsilon=0.08, every_n_frames=5,
                         progress=lambda sent, total: print(sent, "/", total))
        try:
            done = mc.wait(task["task_id"], timeout=3600,
                           on_progress=lambda t: print(t["status"], t["progress"]))
        except TaskFailed as exc:
            print("failed:", exc.error_message)
        else:
            mc.download(done["task_id"], "out.mp4")

        mc.list_tasks(status="completed", limit=20)
        mc.cancel(task["task_id"])
        mc.stats(); mc.health()

Command line (progress bars go to stderr, results to stdout)::

    .venv/bin/python client.py protect in.mp4 -o out.mp4 --epsilon 0.12 --audio-level medium
    .venv/bin/python client.py protect in.mp4 --server http://gpu-box:8000 --api-key SECRET
    .venv/bin/python client.py upload in.mp4 --every-n-frames 5      # prints the task JSON
    .venv/bin/python client.py status TASK_ID
    .venv/bin/python client.py wait TASK_ID                            # resume after Ctrl-C
    .venv/bin/python client.py download TASK_ID -o out.mp4
    .venv/bin/python client.py list --status completed --limit 10
    .venv/bin/python client.py cancel TASK_ID
    .venv/bin/python client.py stats
    .venv/bin/python client.py health

The server URL and API key default to the environment variables ``MEDIA_CLEANER_URL`` and
``MEDIA_CLEANER_API_KEY`` (then ``http://127.0.0.1:8000`` and no key).

Errors are typed: every failure is a :class:`MediaCleanerError` (``.status_code``, ``.detail``,
``.response``), with one subclass per HTTP status the server uses (``NotFound``, ``ValidationError``,
``RateLimited`` ...), :class:`ConnectionFailed` when the server cannot be reached, and
:class:`TaskFailed` / :class:`TaskCancelled` / :class:`WaitTimeout` from :meth:`MediaCleanerClient.wait`.
On the command line they print ``error: <detail>`` and exit with 2 (usage errors, 4xx) or 1 (others).
"""
from __future__ import annotations

import argparse
import email.utils
import json
import mimetypes
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union
from urllib.parse import quote, unquote

import httpx

__version__ = "1.0.0"

__all__ = [
    "MediaCleanerClient",
    "MediaCleanerError", "BadRequest", "AuthenticationError", "NotFound", "Conflict", "Gone",
    "FileTooLarge", "UnsupportedMedia", "ValidationError", "RateLimited", "ServerError",
    "ConnectionFailed", "TaskFailed", "TaskCancelled", "WaitTimeout",
    "main",
]

# ---------------------------------------------------------------------------------------------------
# Constants: every tunable of the client lives here.
# ---------------------------------------------------------------------------------------------------
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENV_BASE_URL = "MEDIA_CLEANER_URL"
ENV_API_KEY = "MEDIA_CLEANER_API_KEY"
API_KEY_HEADER = "X-API-Key"
USER_AGENT = f"media-cleaner-client/{__version__} httpx/{httpx.__version__}"


def _cli_name() -> str:
    """How to run this client again, for the hints it prints: the interpreter as the user can type it (a venv's
    python relative to the current folder, else ``python3``: plain ``python`` is missing on stock Debian)."""
    def near(path: str, otherwise: str) -> str:   # relative to the current folder when inside it
        try:
            relative = os.path.relpath(path)
        except ValueError:   # another drive (Windows)
            return otherwise
        return otherwise if relative.startswith("..") else relative

    interpreter = near(sys.executable, "python3")
    if os.sep not in interpreter and interpreter != "python3":
        interpreter = "." + os.sep + interpreter
    script = near(os.path.abspath(__file__), os.path.abspath(__file__))
    return f"{shlex.quote(interpreter)} {shlex.quote(script)}"


CLI_NAME = _cli_name()
SERVER_START_HINT = CLI_NAME.rsplit(" ", 1)[0] + " run_server.py"

# connect: TCP/TLS set-up; read: longest silence while waiting for a response byte; write: longest
# single socket write (uploads of big videos over a slow link need a generous one); pool: waiting
# for a free connection.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=600.0, pool=30.0)

UPLOAD_CHUNK_SIZE = 1024 * 1024          # bytes read from disk and sent per chunk

POLL_INTERVAL = 1.0                      # first wait between two status polls, seconds
POLL_BACKOFF = 1.5                       # the interval grows by this factor while nothing changes
POLL_MAX_INTERVAL = 10.0                 # ... up to this cap
WAIT_CONNECTION_RETRIES = 3              # consecutive unreachable-server polls tolerated by wait()

MAX_RETRIES = 2                          # re-sends of a request answered 429/503
RETRY_BACKOFF = 2.0                      # seconds before a re-send when the server gave no Retry-After
RETRY_AFTER_CAP = 120.0                  # never sleep longer than this on one Retry-After
DOWNLOAD_RETRIES = 3                     # resumptions (HTTP Range) of a download that broke mid-body
DOWNLOAD_RETRY_DELAY = 1.0

UPLOAD_FIELDS = ("epsilon", "video_strength", "every_n_frames", "audio_level", "user_id", "notes", "webhook_url",
                 "protection")

ProgressCallback = Callable[[int, Optional[int]], None]
PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# Streaming multipart body
# ---------------------------------------------------------------------------------------------------
def _quote_param(value: str) -> str:
    """Escape a multipart header parameter the way browsers (and httpx) do: UTF-8, %22 for quotes."""
    out = []
    for ch in value:
        if ch == '"':
            out.append("%22")
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


class _MultipartUpload:
    """A ``multipart/form-data`` body that streams one file from disk.

    Iterating yields the form fields, then the file in ``chunk_size`` pieces, then the closing
    boundary; ``content_length`` is exact, so the request carries a ``Content-Length`` instead of
    chunked encoding. Each iteration re-opens the file, so the body can be re-sent on a retry.
    """

    def __init__(self, path: Path, fields: Mapping[str, str], *, file_field: str = "file",
                 chunk_size: Optional[int] = None, progress: Optional[ProgressCallback] = None):
        self.path = path
        self.file_size = path.stat().st_size
        self.chunk_size = chunk_size or UPLOAD_CHUNK_SIZE
        self.progress = progress
        self.boundary = uuid.uuid4().hex
        b = self.boundary.encode("ascii")
        head = bytearray()
        for name, value in fields.items():
            head += b"--" + b + b"\r\n"
            head += f'Content-Disposition: form-data; name="{_quote_param(name)}"\r\n\r\n'.encode("utf-8")
            head += str(value).encode("utf-8") + b"\r\n"
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        head += b"--" + b + b"\r\n"
        head += (f'Content-Disposition: form-data; name="{_quote_param(file_field)}"; '
                 f'filename="{_quote_param(path.name)}"\r\n').encode("utf-8")
        head += f"Content-Type: {ctype}\r\n\r\n".encode("ascii")
        self.head = bytes(head)
        self.tail = b"\r\n--" + b + b"--\r\n"
        self.content_length = len(self.head) + self.file_size + len(self.tail)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        if self.progress:
            self.progress(0, self.file_size)
        yield self.head
        with open(self.path, "rb") as fh:
            while sent < self.file_size:
                chunk = fh.read(min(self.chunk_size, self.file_size - sent))
                if not chunk:
                    raise MediaCleanerError(f"{self.path} shrank while it was being uploaded")
                sent += len(chunk)
                yield chunk
                if self.progress:
                    self.progress(sent, self.file_size)
        yield self.tail


# ---------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _content_disposition_filename(value: Optional[str]) -> Optional[str]:
    """The filename of a ``Content-Disposition`` header (``filename*`` preferred), made path-safe."""
    if not value:
        return None
    m = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", value, re.I)
    if m:
        name = unquote(m.group(2).strip().strip('"'), encoding=m.group(1) or "utf-8", errors="replace")
    else:
        m = re.search(r'filename\s*=\s*"((?:[^"\\]|\\.)*)"', value, re.I) or \
            re.search(r"filename\s*=\s*([^;\s]+)", value, re.I)
        if not m:
            return None
        name = re.sub(r"\\(.)", r"\1", m.group(1))
    name = Path(name.replace("\\", "/")).name.strip()
    return name if name not in ("", ".", "..") else None


class MediaCleanerClient:
    """Synchronous client for the Media Cleaner API.

    ``base_url`` defaults to ``$MEDIA_CLEANER_URL`` then ``http://127.0.0.1:8000``; ``api_key`` to
    ``$MEDIA_CLEANER_API_KEY`` (sent as ``X-API-Key``). ``timeout`` is an :class:`httpx.Timeout` or a
    number of seconds for every phase (default :data:`DEFAULT_TIMEOUT`). ``transport`` replaces the
    network layer (tests pass :class:`httpx.MockTransport`). Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Union[httpx.Timeout, float, None] = None,
                 transport: Optional[httpx.BaseTransport] = None):
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        if "://" not in self.base_url:
            self.base_url = "http://" + self.base_url
        self.api_key = api_key if api_key is not None else (os.environ.get(ENV_API_KEY) or None)
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        elif not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(float(timeout))
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  transport=transport, follow_redirects=True)

    # -- lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> "MediaCleanerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MediaCleanerClient(base_url={self.base_url!r})"

    # -- plumbing -----------------------------------------------------------------------------------
    def _connection_error(self, exc: Exception, what: str = "") -> ConnectionFailed:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            msg = (f"cannot reach the Media Cleaner server at {self.base_url} ({exc or type(exc).__name__}); "
                   f"is it running? Start it with `{SERVER_START_HINT}` or pass --server / set {ENV_BASE_URL}")
        elif isinstance(exc, httpx.TimeoutException):
            msg = f"the server at {self.base_url} did not answer in time{what} ({type(exc).__name__})"
        else:
            msg = f"connection to {self.base_url} failed{what}: {exc or type(exc).__name__}"
        return ConnectionFailed(msg, url=self.base_url)

    def _send(self, method: str, path: str, *, stream: bool = False, retries: int = MAX_RETRIES,
              what: str = "", **kwargs: Any) -> httpx.Response:
        """Send one request; map transport failures and non-2xx answers to typed exceptions.

        429/503 answers are re-sent up to ``retries`` times, after ``Retry-After`` seconds. With
        ``stream=True`` a successful response is returned unread (the caller must close it).
        """
        content_factory = kwargs.pop("content_factory", None)
        attempt = 0
        while True:
            send_kwargs = dict(kwargs)
            if content_factory is not None:  # a fresh body per attempt (a generator cannot be replayed)
                body = content_factory()
                send_kwargs["content"] = body
                send_kwargs["headers"] = {**kwargs.get("headers", {}),
                                          "Content-Type": body.content_type,
                                          "Content-Length": str(body.content_length)}
            try:
                request = self._http.build_request(method, path, **send_kwargs)
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise self._connection_error(exc, what) from exc
            if response.is_success:
                if not stream:
                    try:
                        response.read()
                    except httpx.TransportError as exc:
                        raise self._connection_error(exc, what) from exc
                    finally:
                        response.close()
                return response
            try:
                response.read()
            except httpx.TransportError:
                pass
            finally:
                response.close()
            error = _error_from_response(response)
            if isinstance(error, RateLimited) and attempt < retries:
                attempt += 1
                delay = error.retry_after if error.retry_after is not None else RETRY_BACKOFF * attempt
                time.sleep(min(delay, RETRY_AFTER_CAP))
                continue
            raise error

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise MediaCleanerError(f"the server sent a non-JSON answer to {method} {path}",
                                    status_code=response.status_code, response=response) from exc

    @staticmethod
    def _task_path(task_id: str, prefix: str) -> str:
        task_id = str(task_id).strip()
        if not task_id:
            raise ValueError("task_id must not be empty")
        return f"{prefix}/{quote(task_id, safe='')}"

    # -- API ----------------------------------------------------------------------------------------
    def upload(self, path: PathLike, *, epsilon: Optional[float] = None, video_strength: Optional[float] = None,
               every_n_frames: Optional[int] = None, audio_level: Optional[str] = None,
               user_id: Optional[str] = None, notes: Optional[str] = None, webhook_url: Optional[str] = None,
               progress: Optional[ProgressCallback] = None, protection: Optional[str] = None) -> dict:
        """Upload a video and queue it for protection; return the new task's JSON.

        The file is streamed from disk in :data:`UPLOAD_CHUNK_SIZE` pieces (never read whole), with an
        exact ``Content-Length``. ``progress(bytes_sent, total_bytes)`` is called as the file's bytes
        go out (``total_bytes`` is the file size). Parameters left ``None`` take the server's
        defaults (epsilon 0.12, video_strength 1.0, every_n_frames 10, audio_level "weak"; the
        audio level may also be given in Russian: слабый/средний/сильный). A 429/503 answer is
        retried after its ``Retry-After``; the file is then sent again from the start. ``protection`` is a
        preset ("invisible", "balanced", "strong") that sets epsilon and video_strength on the server.

        Raises FileNotFoundError for a missing local file, ValidationError (422) for out-of-range
        parameters, UnsupportedMedia (415), FileTooLarge (413), and the other typed errors.
        """
        file_path = Path(os.fspath(path)).expanduser()
        if not file_path.is_file():
            raise FileNotFoundError(f"no such file: {file_path}")
        values = (epsilon, video_strength, every_n_frames, audio_level, user_id, notes, webhook_url, protection)
        fields = {k: v for k, v in zip(UPLOAD_FIELDS, values, strict=True) if v is not None}
        fields = {k: (repr(v) if isinstance(v, float) else str(v)) for k, v in fields.items()}
        return self._json("POST", "/upload", what=" while uploading (the server may have rejected the file)",
                          content_factory=lambda: _MultipartUpload(file_path, fields, progress=progress))

    def status(self, task_id: str) -> dict:
        """Return the task's JSON (status, progress 0–100, eta_s, parameters, timestamps, report...).

        Raises NotFound for an unknown id."""
        return self._json("GET", self._task_path(task_id, "/status"))

    def wait(self, task_id: str, *, timeout: Optional[float] = None, poll_interval: float = POLL_INTERVAL,
             on_progress: Optional[Callable[[dict], None]] = None) -> dict:
        """Poll the task until it completes; return its final JSON.

        Polls start ``poll_interval`` seconds apart and back off (×:data:`POLL_BACKOFF`, capped at
        :data:`POLL_MAX_INTERVAL`) while the task's status and progress do not change. A 429/503 answer
        makes it sleep the server's ``Retry-After``; a few consecutive connection failures are
        tolerated (server restarts). ``on_progress(task)`` is called with every status seen.
        ``timeout`` (seconds, ``None`` = no limit) bounds the whole wait.

        Raises TaskFailed (with the server's ``error_message``), TaskCancelled, WaitTimeout, NotFound.
        """
        start = time.monotonic()
        deadline = None if timeout is None else start + float(timeout)
        interval = max(0.0, float(poll_interval))
        last_key: Any = None
        task: Optional[dict] = None
        connection_failures = 0
        while True:
            delay: Optional[float] = None
            try:
                # retries=0: a 429/503 is handled here, within the wait's own deadline
                task = self._json("GET", self._task_path(task_id, "/status"), retries=0)
                connection_failures = 0
            except RateLimited as exc:
                delay = exc.retry_after if exc.retry_after is not None else interval
                delay = min(delay, RETRY_AFTER_CAP)
            except ConnectionFailed:
                connection_failures += 1
                if connection_failures > WAIT_CONNECTION_RETRIES:
                    raise
                delay = interval
            if delay is None:
                assert task is not None
                if on_progress:
                    on_progress(task)
                state = task.get("status")
                if state == "completed":
                    return task
                if state == "failed":
                    raise TaskFailed(task)
                if state == "cancelled":
                    raise TaskCancelled(task)
                key = (state, task.get("progress"))
                if last_key is not None and key == last_key:
                    interval = min(max(interval, 0.1) * POLL_BACKOFF, max(POLL_MAX_INTERVAL, poll_interval))
                elif last_key is not None:
                    interval = max(0.0, float(poll_interval))
                last_key = key
                delay = interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(task_id, float(timeout), task)  # type: ignore[arg-type]
                delay = min(delay, remaining)
            time.sleep(delay)

    def _download_to(self, url_path: str, path: PathLike, progress: Optional[ProgressCallback],
                     default_name: str) -> Path:
        """Stream ``url_path`` into ``path`` atomically (temp file beside it, renamed when complete).

        A body that breaks mid-way is resumed with an HTTP Range request (up to :data:`DOWNLOAD_RETRIES`
        times); if it cannot be completed the temp file is removed and nothing appears under ``path``.
        """
        target = Path(os.fspath(path)).expanduser()
        identity = {"Accept-Encoding": "identity"}  # byte counts and ranges refer to the file itself
        response: Optional[httpx.Response] = self._send("GET", url_path, stream=True, headers=identity)
        tmp_name: Optional[str] = None
        try:
            assert response is not None
            if target.is_dir():
                name = _content_disposition_filename(response.headers.get("Content-Disposition")) or default_name
                target = target / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; a download is an ordinary file
            cl = response.headers.get("Content-Length", "")
            total: Optional[int] = int(cl) if cl.isdigit() else None
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            received = 0
            resumes = 0
            resumable = True
            with os.fdopen(fd, "wb") as fh:
                if progress:
                    progress(0, total)
                while True:
                    broken: Optional[Exception] = None
                    if response is None:  # resume where the previous attempt broke off
                        headers = dict(identity)
                        if resumable:
                            headers["Range"] = f"bytes={received}-"
                            if validator:
                                headers["If-Range"] = validator
                        try:
                            response = self._send("GET", url_path, stream=True, headers=headers)
                        except ConnectionFailed as exc:
                            broken = exc
                        else:
                            m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
                            if response.status_code == 206 and m and int(m.group(1)) == received:
                                total = int(m.group(2)) if m.group(2).isdigit() else total
                            else:  # the server sent the whole file again: start over
                                fh.seek(0)
                                fh.truncate()
                                received = 0
                                cl = response.headers.get("Content-Length", "")
                                total = int(cl) if cl.isdigit() else None
                    if response is not None:
                        # byte offsets only match the file when the body is not content-encoded
                        resumable = response.headers.get("Content-Encoding", "identity").lower() == "identity"
                        try:
                            # no chunk size: every byte that arrived is on disk before a break
                            for chunk in response.iter_bytes():
                                fh.write(chunk)
                                received += len(chunk)
                                if progress:
                                    progress(received, total)
                            if total is not None and received < total:
                                broken = httpx.RemoteProtocolError(f"body ended after {received} of {total} bytes")
                        except httpx.TransportError as exc:
                            broken = exc
                        finally:
                            response.close()
                            response = None
                    if broken is None:
                        break
                    if resumes >= DOWNLOAD_RETRIES:
                        if isinstance(broken, MediaCleanerError):
                            raise broken
                        raise self._connection_error(broken, f" while downloading ({received} bytes received)")
                    resumes += 1
                    time.sleep(DOWNLOAD_RETRY_DELAY * resumes)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
            tmp_name = None
            return target
        finally:
            if response is not None:
                response.close()
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass

    def download(self, task_id: str, path: PathLike, progress: Optional[ProgressCallback] = None) -> Path:
        """Download the protected video of a completed task to ``path``; return the final path.

        ``path`` may be a file name or an existing directory (the server's file name is used then).
        The body is streamed to a temporary file beside ``path`` and renamed when complete, so an
        interrupted download never leaves a partial file under the final name; broken transfers are
        resumed with byte ranges. ``progress(bytes_received, total_bytes_or_None)`` reports progress.

        Raises Conflict (409) while the task is not completed, NotFound, Gone (410) once expired.
        """
        return self._download_to(self._task_path(task_id, "/download"), path, progress,
                                 default_name=f"{task_id}_protected.mp4")

    def list_tasks(self, user_id: Optional[str] = None, status: Optional[str] = None,
                   limit: Optional[int] = None, offset: Optional[int] = None) -> dict:
        """List tasks, newest first: ``{"tasks": [...], "total": N, "limit": L, "offset": O}``.

        Filters: ``user_id``, ``status`` (pending|processing|completed|failed|cancelled); paging with
        ``limit``/``offset``."""
        params = {k: v for k, v in (("user_id", user_id), ("status", status), ("limit", limit),
                                    ("offset", offset)) if v is not None}
        return self._json("GET", "/tasks", params=params)

    def cancel(self, task_id: str) -> dict:
        """Cancel a pending/processing task (returns it with status "cancelled"), or delete a finished
        one with its files (returns ``{"task_id": ..., "deleted": true}``)."""
        return self._json("DELETE", self._task_path(task_id, "/tasks"))

    def stats(self) -> dict:
        """Queue counts, worker state, limits and default parameters of the server."""
        return self._json("GET", "/stats")

    def health(self) -> dict:
        """The server's health: ``{"status": "ok", "version": ..., ...}``."""
        return self._json("GET", "/health")

    def report(self, task_id: str) -> dict:
        """The protection report of a task (JSON). Raises NotFound on servers without ``/report``."""
        return self._json("GET", self._task_path(task_id, "/report"))

    def download_preview(self, task_id: str, path: PathLike, progress: Optional[ProgressCallback] = None) -> Path:
        """Save the report's preview image (PNG) to ``path`` atomically; return the final path.

        Raises NotFound on servers without ``/report/{id}/preview.png``."""
        return self._download_to(self._task_path(task_id, "/report") + "/preview.png", path, progress,
                                 default_name=f"{task_id}_preview.png")

    def protect(self, path: PathLike, output: PathLike, *, timeout: Optional[float] = None,
                upload_progress: Optional[ProgressCallback] = None,
                on_progress: Optional[Callable[[dict], None]] = None,
                download_progress: Optional[ProgressCallback] = None, **params: Any) -> Path:
        """Upload ``path``, wait for processing, download the result to ``output``; return its path.

        ``params`` are :meth:`upload`'s keyword arguments (epsilon, video_strength, every_n_frames,
        audio_level, user_id, notes, webhook_url); ``timeout`` bounds the wait. Raises whatever
        :meth:`upload`, :meth:`wait` or :meth:`download` raise.
        """
        task = self.upload(path, progress=upload_progress, **params)
        self.wait(task["task_id"], timeout=timeout, on_progress=on_progress)
        return self.download(task["task_id"], output, progress=download_progress)


# ---------------------------------------------------------------------------------------------------
# Progress bars (stderr, no dependency)
# ---------------------------------------------------------------------------------------------------
def _human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _human_seconds(s: Optional[float]) -> str:
    if s is None or s != s or s < 0:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class ProgressBar:
    """A one-line progress bar on ``stream`` (stderr): redrawn with ``\\r`` on a terminal, or a
    line every few percent / seconds when the stream is not a terminal (logs, CI)."""

    WIDTH = 28
    REDRAW_EVERY = 0.1       # seconds between two terminal redraws
    LINE_EVERY_PCT = 10.0    # non-terminal: one line per this many percent ...
    LINE_EVERY_S = 15.0      # ... or per this many seconds

    def __init__(self, label: str, *, stream: Any = None, enabled: bool = True):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_pct: Optional[float] = None
        self._last_text = ""
        self._drawn = False
        self._finished = False

    def _render(self, fraction: Optional[float], text: str, columns: int = 0) -> str:
        if fraction is None:
            return f"{self.label:<11} {text}"
        fraction = min(max(fraction, 0.0), 1.0)
        width = self.WIDTH
        if columns:  # shrink the bar (not the numbers) to fit the terminal
            width = max(8, min(self.WIDTH, columns - 1 - (11 + 3 + 7 + 1 + len(text))))
        filled = int(round(fraction * width))
        bar = "#" * filled + "-" * (width - filled)
        return f"{self.label:<11} [{bar}] {fraction * 100:5.1f}% {text}"

    def show(self, fraction: Optional[float], text: str = "", *, force: bool = False) -> None:
        """Draw the bar at ``fraction`` (0–1, or None when unknown) followed by ``text``."""
        if not self.enabled or self._finished:
            return
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last_draw < self.REDRAW_EVERY:
                return
            cols = shutil.get_terminal_size((80, 20)).columns
            line = self._render(fraction, text, cols)[: max(10, cols - 1)]
            self.stream.write("\r" + line.ljust(max(len(self._last_text), len(line))))
            self._last_text = line
        else:
            line = self._render(fraction, text)
            pct = None if fraction is None else fraction * 100
            due = (force or self._last_pct is None or now - self._last_draw >= self.LINE_EVERY_S
                   or (pct is not None and pct - (self._last_pct or 0) >= self.LINE_EVERY_PCT))
            if not due or line == self._last_text:
                return
            self.stream.write(line + "\n")
            self._last_text = line
            self._last_pct = pct if pct is not None else self._last_pct or 0.0
        self.stream.flush()
        self._last_draw = now
        self._drawn = True

    def bytes(self, done: int, total: Optional[int]) -> None:
        """Progress callback for byte transfers: ``bar.bytes(done, total)``."""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = done / elapsed
        text = f"{_human_bytes(done)}/{_human_bytes(total)} {_human_bytes(rate)}/s"
        if total:
            eta = (total - done) / rate if rate > 0 else None
            text += f" ETA {_human_seconds(eta)}"
        self.show(done / total if total else None, text, force=bool(total) and done >= total)

    def task(self, task: Mapping[str, Any]) -> None:
        """Progress callback for :meth:`MediaCleanerClient.wait`: percent, status and ETA (eta_s)."""
        state = task.get("status") or "?"
        progress = float(task.get("progress") or 0.0)
        label = {"pending": "queued", "processing": "processing"}.get(state, state)
        text = f"{label} ETA {_human_seconds(task.get('eta_s'))}" if state in ("pending", "processing") else label
        self.show(progress / 100.0, text, force=state not in ("pending", "processing"))

    def finish(self, text: Optional[str] = None) -> None:
        """End the bar (newline on a terminal), optionally replacing it with ``text``."""
        if not self.enabled or self._finished:
            return
        if self.tty:
            if text is not None:
                self.stream.write("\r" + f"{self.label:<11} {text}".ljust(len(self._last_text)) + "\n")
            elif self._drawn:
                self.stream.write("\n")
        elif text is not None:
            self.stream.write(f"{self.label:<11} {text}\n")
        self.stream.flush()
        self._finished = True


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", metavar="URL", default=argparse.SUPPRESS,
                        help=f"server base URL (default: ${ENV_BASE_URL} or {DEFAULT_BASE_URL})")
    common.add_argument("--api-key", metavar="KEY", default=argparse.SUPPRESS,
                        help=f"API key sent as {API_KEY_HEADER} (default: ${ENV_API_KEY})")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")

    params = argparse.ArgumentParser(add_help=False)
    g = params.add_argument_group("protection parameters (server defaults when omitted)")
    g.add_argument("--protection", help="preset: invisible (default), balanced or strong; sets --epsilon and "
                                        "--video-strength, which win when given")
    g.add_argument("--epsilon", type=float, help="perturbation budget, 0.04–0.20 (default 0.12)")
    g.add_argument("--video-strength", type=float, help="strength multiplier, 1.0–2.0 (default 1.0)")
    g.add_argument("--every-n-frames", type=int, help="optimise every N-th frame, 1–30 (default 10)")
    g.add_argument("--audio-level", help="none|weak|medium|strong (or слабый|средний|сильный; default weak)")
    g.add_argument("--user-id", help="owner tag, usable as a filter in `list`")
    g.add_argument("--notes", help="free text stored with the task")
    g.add_argument("--webhook-url", help="URL the server calls when the task ends")

    parser = argparse.ArgumentParser(
        prog=CLI_NAME, parents=[common],
        description="Media Cleaner client: protect videos against face detection and voice cloning.",
        epilog=f"example: {CLI_NAME} protect in.mp4 -o out.mp4 --epsilon 0.12 --audio-level medium")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("protect", parents=[common, params], help="upload, wait, download (with progress bars)")
    p.add_argument("input", help="video file")
    p.add_argument("-o", "--output", help="output file or directory (default: <input>_protected.mp4)")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p.add_argument("--json", action="store_true",
                   help="print the task, where the video was saved and its report as JSON (for scripts)")

    p = sub.add_parser("upload", parents=[common, params], help="upload a video, print the task JSON")
    p.add_argument("input", help="video file")

    p = sub.add_parser("status", parents=[common], help="print a task's JSON")
    p.add_argument("task_id")

    p = sub.add_parser("wait", parents=[common], help="wait for a task to finish, print its JSON")
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")

    p = sub.add_parser("download", parents=[common], help="download a completed task's video")
    p.add_argument("task_id")
    p.add_argument("-o", "--output", default=".", help="output file or directory (default: .)")

    p = sub.add_parser("list", parents=[common], help="list tasks as JSON")
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed", "cancelled"])
    p.add_argument("--user-id")
    p.add_argument("--limit", type=int)
    p.add_argument("--offset", type=int)

    p = sub.add_parser("cancel", parents=[common], help="cancel a running task / delete a finished one")
    p.add_argument("task_id")

    p = sub.add_parser("report", parents=[common], help="print a task's protection report")
    p.add_argument("task_id")

    sub.add_parser("stats", parents=[common], help="print queue and worker statistics")
    sub.add_parser("health", parents=[common], help="print the server's health")
    return parser


def _upload_params(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in UPLOAD_FIELDS if getattr(args, k, None) is not None}


def verdict(report: dict) -> str:
    """The task report in one plain line: what the protection achieved, as the service measured it."""
    if report.get("error") or report.get("note"):
        return f"report: {report.get('error') or report.get('note')}"
    parts = []
    mtcnn = (report.get("detection") or {}).get("mtcnn") or {}
    if mtcnn.get("protected_rate") is not None and mtcnn.get("original_rate"):
        parts.append(f"faces still found by MTCNN in {mtcnn['protected_rate']:.0%} of sampled frames "
                     f"(original {mtcnn['original_rate']:.0%})")
    elif mtcnn.get("original_rate") == 0:
        parts.append("no face in the sampled frames")
    identity = report.get("identity") or {}
    if identity.get("match_rate") is not None:
        parts.append(f"face recognised as the person in {identity['match_rate']:.0%} of sampled frames "
                     f"(FaceNet distance {identity['mean_distance']:.2f}, match below {identity['threshold']:.1f})")
    speaker = report.get("speaker") or {}
    if speaker.get("similarity") is not None:
        parts.append(f"voice {'still matches' if speaker.get('match') else 'no longer matches'} the speaker "
                     f"(similarity {speaker['similarity']:.2f}, threshold {speaker['threshold']:.2f})")
    elif speaker.get("note"):
        parts.append(f"voice: {speaker['note']}")
    if report.get("psnr") is not None:
        parts.append(f"picture PSNR {report['psnr']:.1f} dB, SSIM {report.get('ssim', 0):.3f}")
    if not parts:
        return "report: nothing was measured"
    # The report's judges are the engines' own white-box surrogates: an upper bound on the protection.
    return "report (white-box surrogates, an upper bound): " + "; ".join(parts)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, MediaCleanerError) and exc.status_code is not None and 400 <= exc.status_code < 500:
        return 2
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, ValueError)) and not isinstance(exc, MediaCleanerError):
        return 2
    return 1


def _run(args: argparse.Namespace, client: MediaCleanerClient, quiet: bool) -> int:
    cmd = args.command

    def waiting(task_id: str, timeout: Optional[float], resume_hint: str) -> dict:
        bar = ProgressBar("processing", enabled=not quiet)
        try:
            task = client.wait(task_id, timeout=timeout, on_progress=bar.task)
        except KeyboardInterrupt:
            bar.finish("interrupted")
            raise _Interrupted(f"interrupted; task {task_id} keeps running on the server. "
                               f"Resume with: {resume_hint}") from None
        except MediaCleanerError:
            bar.finish()
            raise
        bar.finish()
        return task

    if cmd in ("protect", "upload"):
        src = Path(args.input)
        bar = ProgressBar("upload", enabled=not quiet)
        try:
            task = client.upload(src, progress=bar.bytes, **_upload_params(args))
        except BaseException:
            bar.finish()
            raise
        bar.finish(f"done: task {task['task_id']}")
        if cmd == "upload":
            _print_json(task)
            return 0
        task_id = task["task_id"]
        output = Path(args.output) if args.output else src.with_name(f"{src.stem}_protected.mp4")
        hint = f"{CLI_NAME} wait {task_id} && {CLI_NAME} download {task_id} -o {output}"
        waiting(task_id, args.timeout, hint)
        bar = ProgressBar("download", enabled=not quiet)
        try:
            saved = client.download(task_id, output, progress=bar.bytes)
        except KeyboardInterrupt:
            raise _Interrupted(f"interrupted; the protected video stays on the server. "
                               f"Download it with: {CLI_NAME} download {task_id} -o {output}") from None
        finally:
            bar.finish()
        try:
            report = client.report(task_id)
        except MediaCleanerError as exc:   # an old server, or one with reports off
            report = {"note": f"no report ({exc})"}
        if args.json:
            _print_json({"task": client.status(task_id), "saved_to": str(saved.resolve()), "report": report})
        else:
            print(f"protected video saved to {saved.resolve()}")
            print(verdict(report))
        return 0
    if cmd == "wait":
        _print_json(waiting(args.task_id, args.timeout, f"{CLI_NAME} wait {args.task_id}"))
        return 0
    if cmd == "download":
        bar = ProgressBar("download", enabled=not quiet)
        try:
            saved = client.download(args.task_id, args.output, progress=bar.bytes)
        finally:
            bar.finish()
        print(saved.resolve())
        return 0
    if cmd == "status":
        _print_json(client.status(args.task_id))
    elif cmd == "list":
        _print_json(client.list_tasks(user_id=args.user_id, status=args.status, limit=args.limit,
                                      offset=args.offset))
    elif cmd == "cancel":
        _print_json(client.cancel(args.task_id))
    elif cmd == "report":
        _print_json(client.report(args.task_id))
    elif cmd == "stats":
        _print_json(client.stats())
    elif cmd == "health":
        _print_json(client.health())
    return 0


class _Interrupted(Exception):
    """Ctrl-C while waiting; carries the resume hint."""


def main(argv: Optional[list[str]] = None, *, transport: Optional[httpx.BaseTransport] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 for usage errors and 4xx answers, 1 for other failures, 130 on Ctrl-C.
    ``transport`` is passed to the client (tests use :class:`httpx.MockTransport`).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    quiet = bool(getattr(args, "quiet", False))
    try:
        with MediaCleanerClient(base_url=getattr(args, "server", None), api_key=getattr(args, "api_key", None),
                                transport=transport) as client:
            return _run(args, client, quiet)
    except _Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`client.py status ID | head`): not an error to report. Python's own advice:
        # point stdout at devnull so the interpreter's final flush does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):   # stdout is not a file (captured)
            pass
        return 1
    except (MediaCleanerError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
