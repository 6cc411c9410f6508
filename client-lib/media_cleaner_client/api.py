"""The library: :class:`MediaCleanerClient`, one method per API operation, streaming uploads and resumable
downloads."""
from __future__ import annotations

import mimetypes
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union
from urllib.parse import quote, unquote

import httpx

from media_cleaner_client.constants import (
    API_KEY_HEADER,
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    DOWNLOAD_RETRIES,
    DOWNLOAD_RETRY_DELAY,
    ENV_API_KEY,
    ENV_BASE_URL,
    MAX_RETRIES,
    POLL_BACKOFF,
    POLL_INTERVAL,
    POLL_MAX_INTERVAL,
    PathLike,
    ProgressCallback,
    RETRY_AFTER_CAP,
    RETRY_BACKOFF,
    SERVER_START_HINT,
    UPLOAD_CHUNK_SIZE,
    UPLOAD_FIELDS,
    USER_AGENT,
    WAIT_CONNECTION_RETRIES,
)
from media_cleaner_client.errors import (
    ConnectionFailed,
    MediaCleanerError,
    RateLimited,
    TaskCancelled,
    TaskFailed,
    WaitTimeout,
    _error_from_response,
)



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


