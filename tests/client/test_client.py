"""Tests of client.py against an in-memory fake of the Media Cleaner API (httpx.MockTransport).

No server and no network: ``FakeServer`` implements the API contract (upload, status, download
with ranges, tasks, cancel/delete, stats, health) and lets each test script odd answers
(429 with Retry-After, broken bodies, failures).
"""
from __future__ import annotations

import io
import json
import sys
import time
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import client as mc  # noqa: E402

BASE = "http://testserver"


# ---------------------------------------------------------------------------------------------------
# Fake server
# ---------------------------------------------------------------------------------------------------
def parse_multipart(content_type: str, body: bytes) -> tuple[dict, dict]:
    """Parse a multipart/form-data body with the stdlib: (fields, files{name: (filename, ctype, data)})."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert msg.is_multipart()
    fields, files = {}, {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True)
        if filename is not None:
            files[name] = (filename, part.get_content_type(), data)
        else:
            fields[name] = data.decode("utf-8")
    return fields, files


def err(status: int, detail: Any, headers: Optional[dict] = None) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


class FakeServer:
    """The API contract, in memory. ``script[(method, path)]`` is a list of responders used first."""

    VIDEO = bytes(range(256)) * 40  # 10240 bytes of "video"

    def __init__(self, api_key: Optional[str] = None):
        self.api_key = api_key
        self.tasks: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[httpx.Request] = []
        self.script: dict[tuple[str, str], list[Callable[[httpx.Request], httpx.Response]]] = {}
        self.upload_log: list[dict] = []
        self.on_upload_chunk: Optional[Callable[[int], None]] = None
        self.counter = 0

    # helpers for tests
    def add_task(self, status: str = "completed", **extra: Any) -> dict:
        self.counter += 1
        tid = f"task{self.counter:04d}"
        task = {
            "task_id": tid, "input_video": f"/data/in/{tid}.mp4", "original_filename": "clip.mp4",
            "status": status, "progress": 100.0 if status == "completed" else 0.0, "eta_s": None,
            "epsilon": 0.12, "video_strength": 1.0, "audio_level": "weak", "every_n_frames": 10,
            "user_id": None, "notes": None, "webhook_url": None,
            "created_at": datetime.now(timezone.utc).isoformat(), "started_at": None, "completed_at": None,
            "attempts": 0, "output_video": None, "error_message": None, "media": None, "report": None,
        }
        task.update(extra)
        self.tasks[tid] = task
        if status == "completed":
            self.files[tid] = self.VIDEO
        return task

    def then(self, method: str, path: str, *responders: Callable[[httpx.Request], httpx.Response]) -> None:
        self.script.setdefault((method, path), []).extend(responders)

    # the transport handler
    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        queue = self.script.get((request.method, path))
        if queue:
            return queue.pop(0)(request)
        if self.api_key and request.headers.get("X-API-Key") != self.api_key:
            return err(401, "Invalid or missing API key")
        parts = path.strip("/").split("/")
        m = request.method
        if m == "POST" and path in ("/upload", "/upload_with_webhook"):
            return self.upload(request)
        if m == "GET" and parts[0] == "status" and len(parts) == 2:
            task = self.tasks.get(parts[1])
            return httpx.Response(200, json=task) if task else err(404, f"Task {parts[1]} not found")
        if m == "GET" and parts[0] == "download" and len(parts) == 2:
            return self.download(request, parts[1])
        if m == "GET" and path == "/tasks":
            return self.list(request)
        if m == "DELETE" and parts[0] == "tasks" and len(parts) == 2:
            return self.delete(parts[1])
        if m == "GET" and path == "/stats":
            counts = {s: sum(t["status"] == s for t in self.tasks.values())
                      for s in ("pending", "processing", "completed", "failed", "cancelled")}
            counts["total"] = len(self.tasks)
            return httpx.Response(200, json={"queue": counts, "workers": {"count": 1, "busy": 0},
                                             "limits": {"max_upload_mb": 500},
                                             "defaults": {"epsilon": 0.12, "video_strength": 1.0,
                                                          "every_n_frames": 10, "audio_level": "weak"}})
        if m == "GET" and path == "/health":
            return httpx.Response(200, json={"status": "ok", "version": "test", "device": "cpu"})
        return err(404, "Not Found")

    def upload(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        already_read = hasattr(request, "_content")
        chunks = []
        # read the body as the server would: chunk by chunk from the stream
        for chunk in stream:
            chunks.append(bytes(chunk))
            if self.on_upload_chunk:
                self.on_upload_chunk(len(chunks))
        body = b"".join(chunks)
        fields, files = parse_multipart(request.headers["Content-Type"], body)
        self.upload_log.append({"stream_type": type(stream).__name__, "already_read": already_read,
                                "chunks": len(chunks),
                                "body_len": len(body), "content_length": request.headers.get("Content-Length"),
                                "transfer_encoding": request.headers.get("Transfer-Encoding"),
                                "fields": fields, "files": files, "request": request})
        if "file" not in files:
            return err(400, "No file part in the request")
        filename, _ctype, data = files["file"]
        if not data.startswith(b"FAKEVIDEO"):
            return err(415, f"{filename} is not a video the server can read")
        try:
            eps = float(fields.get("epsilon", 0.12))
        except ValueError:
            eps = -1
        if not 0.04 <= eps <= 0.20:
            return err(422, [{"type": "less_than_equal", "loc": ["body", "epsilon"],
                              "msg": "Input should be less than or equal to 0.2", "input": fields.get("epsilon")}])
        level = {"слабый": "weak", "средний": "medium", "сильный": "strong"}.get(
            fields.get("audio_level", "weak"), fields.get("audio_level", "weak"))
        task = self.add_task("pending", original_filename=filename, epsilon=eps,
                             video_strength=float(fields.get("video_strength", 1.0)),
                             every_n_frames=int(fields.get("every_n_frames", 10)), audio_level=level,
                             user_id=fields.get("user_id"), notes=fields.get("notes"),
                             webhook_url=fields.get("webhook_url"))
        return httpx.Response(202, json=task, headers={"Location": f"/status/{task['task_id']}"})

    def download(self, request: httpx.Request, tid: str) -> httpx.Response:
        task = self.tasks.get(tid)
        if task is None:
            return err(404, f"Task {tid} not found")
        if task.get("expired"):
            return err(410, "The output of this task has expired")
        if task["status"] != "completed":
            return err(409, f"Task {tid} is {task['status']}, not completed")
        data = self.files[tid]
        name = Path(task["original_filename"]).stem
        headers = {"Content-Disposition": f'attachment; filename="{name}_protected.mp4"',
                   "Accept-Ranges": "bytes", "ETag": '"v1"', "Content-Type": "video/mp4"}
        rng = request.headers.get("Range")
        if rng and rng.startswith("bytes=") and request.headers.get("If-Range", '"v1"') == '"v1"':
            start = int(rng[6:].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return httpx.Response(206, content=data[start:], headers=headers)
        return httpx.Response(200, content=data, headers=headers)

    def list(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        tasks = list(self.tasks.values())
        if q.get("user_id"):
            tasks = [t for t in tasks if t["user_id"] == q["user_id"]]
        if q.get("status"):
            tasks = [t for t in tasks if t["status"] == q["status"]]
        limit, offset = int(q.get("limit", 50)), int(q.get("offset", 0))
        return httpx.Response(200, json={"tasks": tasks[offset:offset + limit], "total": len(tasks),
                                         "limit": limit, "offset": offset})

    def delete(self, tid: str) -> httpx.Response:
        task = self.tasks.get(tid)
        if task is None:
            return err(404, f"Task {tid} not found")
        if task["status"] in ("pending", "processing"):
            task["status"] = "cancelled"
            return httpx.Response(200, json=task)
        del self.tasks[tid]
        self.files.pop(tid, None)
        return httpx.Response(200, json={"task_id": tid, "deleted": True})


class StreamingMockTransport(httpx.MockTransport):
    """``httpx.MockTransport`` reads the whole request body before calling the handler; this one
    does not, so the fake server consumes the body chunk by chunk as a real server would, and the
    tests can check that the client sent a stream rather than a buffered body."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


class BrokenBody(httpx.SyncByteStream):
    """A response body that sends ``data[:cut]`` and then fails like a dropped connection."""

    def __init__(self, data: bytes, cut: int):
        self.data, self.cut = data, cut

    def __iter__(self):
        yield self.data[: self.cut]
        raise httpx.ReadError("connection reset by peer")


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(server: FakeServer):
    with mc.MediaCleanerClient(BASE, transport=StreamingMockTransport(server)) as c:
        yield c


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Replace time.sleep with a recorder that advances a fake monotonic clock."""
    clock = {"now": 1000.0}
    recorded: list[float] = []

    def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(mc.time, "sleep", fake_sleep)
    monkeypatch.setattr(mc.time, "monotonic", lambda: clock["now"])
    return recorded


@pytest.fixture
def video(tmp_path: Path) -> Path:
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"FAKEVIDEO" + bytes(range(256)) * 100)  # 25609 bytes
    return p


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(mc.ENV_BASE_URL, raising=False)
    monkeypatch.delenv(mc.ENV_API_KEY, raising=False)


def run_cli(server: FakeServer, argv: list[str], capsys) -> tuple[int, str, str]:
    code = mc.main(argv + ["--server", BASE], transport=StreamingMockTransport(server))
    out, errtext = capsys.readouterr()
    return code, out, errtext


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------
def test_defaults_and_env(monkeypatch):
    c = mc.MediaCleanerClient()
    assert c.base_url == "http://127.0.0.1:8000" == mc.DEFAULT_BASE_URL
    assert mc.API_KEY_HEADER not in c._http.headers
    assert c._http.timeout.write >= 300 and c._http.timeout.connect <= 30
    c.close()
    monkeypatch.setenv("MEDIA_CLEANER_URL", "http://example:9000/")
    monkeypatch.setenv("MEDIA_CLEANER_API_KEY", "k1")
    with mc.MediaCleanerClient() as c:
        assert c.base_url == "http://example:9000"
        assert c._http.headers["X-API-Key"] == "k1"
    with mc.MediaCleanerClient("other:1", api_key="k2", timeout=5) as c:
        assert c.base_url == "http://other:1"
        assert c._http.headers["X-API-Key"] == "k2"
        assert c._http.timeout.read == 5


def test_api_key_is_sent(video):
    server = FakeServer(api_key="secret")
    with mc.MediaCleanerClient(BASE, api_key="secret", transport=StreamingMockTransport(server)) as c:
        assert c.health()["status"] == "ok"
    with mc.MediaCleanerClient(BASE, api_key="wrong", transport=StreamingMockTransport(server)) as c:
        with pytest.raises(mc.AuthenticationError) as exc:
            c.status("x")
    assert exc.value.status_code == 401 and str(exc.value) == "Invalid or missing API key"


# ---------------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------------
def test_upload_streams_file_with_fields_and_progress(client, server, video, monkeypatch):
    monkeypatch.setattr("media_cleaner_client.api.UPLOAD_CHUNK_SIZE", 4096)
    calls: list[tuple[int, int]] = []
    progress_before_first_chunk: list[int] = []
    server.on_upload_chunk = lambda n: progress_before_first_chunk.append(len(calls)) if n == 1 else None
    # the file is never read whole: Path.read_bytes and a full-size read would show up here
    real_open = open
    reads: list[int] = []

    class SpyFile(io.FileIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    def spy_open(file, mode="r", *a, **kw):
        if str(file) == str(video) and "b" in mode:
            return SpyFile(file, "r")
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", spy_open)
    task = client.upload(video, epsilon=0.08, video_strength=1.5, every_n_frames=5, audio_level="средний",
                         user_id="u1", notes="заметка", webhook_url="http://hook/x",
                         progress=lambda s, t: calls.append((s, t)))
    monkeypatch.setattr("builtins.open", real_open)

    log = server.upload_log[-1]
    size = video.stat().st_size
    # a streamed body: an iterator, sent in several chunks, with an exact Content-Length, not chunked
    assert log["stream_type"] == "IteratorByteStream" and not log["already_read"]
    assert log["chunks"] >= size // 4096
    assert log["transfer_encoding"] is None
    assert int(log["content_length"]) == log["body_len"]
    assert reads and max(reads) <= 4096 and -1 not in reads
    # nothing was sent before the server started reading (no pre-buffering of the body)
    assert progress_before_first_chunk == [1]  # only the initial (0, total) call
    # multipart content
    assert log["fields"] == {"epsilon": "0.08", "video_strength": "1.5", "every_n_frames": "5",
                             "audio_level": "средний", "user_id": "u1", "notes": "заметка",
                             "webhook_url": "http://hook/x"}
    filename, ctype, data = log["files"]["file"]
    assert filename == "clip.mp4" and ctype == "video/mp4" and data == video.read_bytes()
    # progress
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:], strict=False))
    # result
    assert task["status"] == "pending" and task["audio_level"] == "medium" and task["every_n_frames"] == 5
    assert task["task_id"] in server.tasks


def test_upload_omits_unset_fields_and_quotes_filename(client, server, tmp_path):
    p = tmp_path / 'my "видео".mp4'
    p.write_bytes(b"FAKEVIDEO")
    task = client.upload(p)
    log = server.upload_log[-1]
    assert log["fields"] == {}
    assert log["files"]["file"][0] == "my %22видео%22.mp4"
    assert task["epsilon"] == 0.12


def test_upload_missing_file(client):
    with pytest.raises(FileNotFoundError):
        client.upload("/nonexistent/clip.mp4")


def test_upload_retries_429_with_a_fresh_body(client, server, video, sleeps):
    server.then("POST", "/upload", lambda r: (r.read(), err(429, "Too many uploads", {"Retry-After": "3"}))[1])
    task = client.upload(video)
    assert sleeps == [3.0]
    assert server.upload_log[-1]["files"]["file"][2] == video.read_bytes()
    assert task["status"] == "pending"


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, cls", [
    (400, mc.BadRequest), (401, mc.AuthenticationError), (404, mc.NotFound), (409, mc.Conflict),
    (410, mc.Gone), (413, mc.FileTooLarge), (415, mc.UnsupportedMedia), (429, mc.RateLimited),
    (503, mc.RateLimited), (500, mc.ServerError), (502, mc.ServerError),
])
def test_status_codes_map_to_exceptions(client, server, status, cls, sleeps):
    for _ in range(mc.MAX_RETRIES + 1):
        server.then("GET", "/status/abc", lambda r: err(status, f"detail for {status}", {"Retry-After": "1"}))
    with pytest.raises(cls) as exc:
        client.status("abc")
    e = exc.value
    assert isinstance(e, mc.MediaCleanerError)
    assert e.status_code == status and e.detail == f"detail for {status}" and str(e) == f"detail for {status}"
    assert e.response is not None and e.response.status_code == status
    if cls is mc.RateLimited:
        assert e.retry_after == 1.0 and sleeps == [1.0] * mc.MAX_RETRIES


def test_validation_error_list_detail(client, server, video):
    with pytest.raises(mc.ValidationError) as exc:
        client.upload(video, epsilon=0.5)
    e = exc.value
    assert str(e) == "epsilon: Input should be less than or equal to 0.2"
    assert isinstance(e.detail, list) and e.detail[0]["loc"] == ["body", "epsilon"]
    assert e.fields == ["epsilon"] and e.status_code == 422


def test_validation_error_string_detail(client, server):
    server.then("GET", "/tasks", lambda r: err(422, "limit 0 is below the minimum 1"))
    with pytest.raises(mc.ValidationError) as exc:
        client.list_tasks(limit=0)
    assert str(exc.value) == "limit 0 is below the minimum 1" and exc.value.errors == []
    e = mc.ValidationError("epsilon 0.5 is above the maximum 0.2 (allowed 0.04–0.2)", status_code=422)
    assert e.fields == ["epsilon"] and e.detail == str(e)


def test_unsupported_media_and_not_found(client, server, tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_text("hello, I am text")
    with pytest.raises(mc.UnsupportedMedia, match="x.mp4 is not a video"):
        client.upload(bad)
    with pytest.raises(mc.NotFound, match="Task nope not found"):
        client.status("nope")


def test_non_json_error_body(client, server):
    server.then("GET", "/health", lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(mc.ServerError, match="Bad Gateway") as exc:
        client.health()
    assert exc.value.status_code == 502


def test_retry_after_http_date():
    when = datetime.fromtimestamp(time.time() + 30, timezone.utc)
    value = mc._parse_retry_after(when.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert 25 <= value <= 31
    assert mc._parse_retry_after("7") == 7.0 and mc._parse_retry_after(None) is None
    assert mc._parse_retry_after("soon") is None


def test_connection_failed_names_url_and_hint():
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with mc.MediaCleanerClient("http://127.0.0.1:1", transport=StreamingMockTransport(refuse)) as c:
        with pytest.raises(mc.ConnectionFailed) as exc:
            c.health()
    msg = str(exc.value)
    assert "http://127.0.0.1:1" in msg and "python run_server.py" in msg
    assert exc.value.url == "http://127.0.0.1:1" and exc.value.status_code is None


# ---------------------------------------------------------------------------------------------------
# Wait
# ---------------------------------------------------------------------------------------------------
def scripted_status(server: FakeServer, tid: str, *states: dict) -> None:
    base = server.tasks[tid]
    for state in states:
        server.then("GET", f"/status/{tid}", lambda r, s=state: httpx.Response(200, json={**base, **s}))


def test_wait_polls_with_backoff_and_reports_progress(client, server, sleeps):
    tid = server.add_task("pending")["task_id"]
    scripted_status(server, tid, {"status": "pending"}, {"status": "pending"}, {"status": "pending"},
                    {"status": "processing", "progress": 40.0, "eta_s": 12.0},
                    {"status": "processing", "progress": 80.0, "eta_s": 3.0},
                    {"status": "completed", "progress": 100.0})
    seen = []
    task = client.wait(tid, poll_interval=1.0, on_progress=lambda t: seen.append((t["status"], t["progress"])))
    assert task["status"] == "completed"
    assert seen[-1] == ("completed", 100.0) and ("processing", 40.0) in seen
    # backoff while nothing changes, reset when progress moves
    assert sleeps[0] == 1.0 and sleeps[1] > sleeps[0] and sleeps[2] > sleeps[1]
    assert sleeps[3] == 1.0
    assert max(sleeps) <= mc.POLL_MAX_INTERVAL


def test_wait_backoff_is_capped(client, server, sleeps):
    tid = server.add_task("processing")["task_id"]
    scripted_status(server, tid, *([{"status": "processing"}] * 15), {"status": "completed"})
    client.wait(tid)
    assert max(sleeps) == mc.POLL_MAX_INTERVAL


def test_wait_honours_retry_after(client, server, sleeps):
    tid = server.add_task("processing", progress=10.0)["task_id"]
    server.then("GET", f"/status/{tid}", lambda r: err(429, "slow down", {"Retry-After": "7"}))
    server.then("GET", f"/status/{tid}", lambda r: err(503, "busy", {"Retry-After": "4"}))
    scripted_status(server, tid, {"status": "completed", "progress": 100.0})
    assert client.wait(tid, poll_interval=0.5)["status"] == "completed"
    assert sleeps == [7.0, 4.0]


def test_wait_raises_task_failed(client, server, sleeps):
    tid = server.add_task("processing")["task_id"]
    scripted_status(server, tid, {"status": "failed", "error_message": "ffmpeg could not decode the video"})
    with pytest.raises(mc.TaskFailed) as exc:
        client.wait(tid)
    assert exc.value.error_message == "ffmpeg could not decode the video"
    assert "ffmpeg could not decode the video" in str(exc.value) and exc.value.task_id == tid
    assert exc.value.task["status"] == "failed"


def test_wait_raises_task_cancelled(client, server, sleeps):
    tid = server.add_task("pending")["task_id"]
    client.cancel(tid)
    with pytest.raises(mc.TaskCancelled) as exc:
        client.wait(tid)
    assert exc.value.task_id == tid


def test_wait_timeout(client, server, sleeps):
    tid = server.add_task("processing", progress=30.0)["task_id"]
    with pytest.raises(mc.WaitTimeout) as exc:
        client.wait(tid, timeout=10, poll_interval=1.0)
    assert sum(sleeps) == pytest.approx(10.0)  # never sleeps past the deadline
    assert exc.value.task["progress"] == 30.0 and f"wait {tid}" in str(exc.value)


def test_wait_unknown_task(client, sleeps):
    with pytest.raises(mc.NotFound):
        client.wait("nope")


def test_wait_tolerates_brief_connection_loss(client, server, sleeps):
    tid = server.add_task("processing")["task_id"]

    def drop(request):
        raise httpx.ConnectError("refused")

    server.then("GET", f"/status/{tid}", drop, drop)
    scripted_status(server, tid, {"status": "completed"})
    assert client.wait(tid)["status"] == "completed"
    for _ in range(mc.WAIT_CONNECTION_RETRIES + 1):
        server.then("GET", f"/status/{tid}", drop)
    with pytest.raises(mc.ConnectionFailed):
        client.wait(tid)


# ---------------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------------
def test_download_writes_file_with_progress(client, server, tmp_path):
    tid = server.add_task("completed")["task_id"]
    calls = []
    out = client.download(tid, tmp_path / "sub" / "out.mp4", progress=lambda r, t: calls.append((r, t)))
    assert out == tmp_path / "sub" / "out.mp4" and out.read_bytes() == FakeServer.VIDEO
    assert calls[-1] == (len(FakeServer.VIDEO), len(FakeServer.VIDEO))
    assert list(out.parent.iterdir()) == [out]  # no temp file left
    assert server.requests[-1].headers["Accept-Encoding"] == "identity"


def test_download_into_directory_uses_server_name(client, server, tmp_path):
    tid = server.add_task("completed", original_filename="holiday.mov")["task_id"]
    out = client.download(tid, tmp_path)
    assert out == tmp_path / "holiday_protected.mp4" and out.read_bytes() == FakeServer.VIDEO


def test_download_broken_body_leaves_no_file(client, server, tmp_path, sleeps):
    tid = server.add_task("completed")["task_id"]
    data = FakeServer.VIDEO

    def broken(request):
        return httpx.Response(200, stream=BrokenBody(data, 1000),
                              headers={"Content-Length": str(len(data)), "ETag": '"v1"'})

    for _ in range(mc.DOWNLOAD_RETRIES + 1):
        server.then("GET", f"/download/{tid}", broken)
    target = tmp_path / "out.mp4"
    with pytest.raises(mc.ConnectionFailed, match="while downloading"):
        client.download(tid, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is gone too


def test_download_broken_body_keeps_existing_file(client, server, tmp_path, sleeps):
    tid = server.add_task("completed")["task_id"]
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous version")

    def broken(request):
        return httpx.Response(200, stream=BrokenBody(FakeServer.VIDEO, 10),
                              headers={"Content-Length": str(len(FakeServer.VIDEO))})

    for _ in range(mc.DOWNLOAD_RETRIES + 1):
        server.then("GET", f"/download/{tid}", broken)
    with pytest.raises(mc.ConnectionFailed):
        client.download(tid, target)
    assert target.read_bytes() == b"previous version"


def test_download_resumes_with_range(client, server, tmp_path, sleeps):
    tid = server.add_task("completed")["task_id"]
    data = FakeServer.VIDEO
    server.then("GET", f"/download/{tid}", lambda r: httpx.Response(
        200, stream=BrokenBody(data, 3000), headers={"Content-Length": str(len(data)), "ETag": '"v1"'}))
    out = client.download(tid, tmp_path / "out.mp4")
    assert out.read_bytes() == data
    resumed = server.requests[-1]
    assert resumed.headers["Range"] == "bytes=3000-" and resumed.headers["If-Range"] == '"v1"'


def test_download_restarts_when_range_ignored(client, server, tmp_path, sleeps):
    tid = server.add_task("completed")["task_id"]
    data = FakeServer.VIDEO
    server.then("GET", f"/download/{tid}",
                lambda r: httpx.Response(200, stream=BrokenBody(data, 3000),
                                         headers={"Content-Length": str(len(data))}),
                lambda r: httpx.Response(200, content=data))
    assert client.download(tid, tmp_path / "o.mp4").read_bytes() == data


@pytest.mark.parametrize("status, cls", [("pending", mc.Conflict), ("processing", mc.Conflict)])
def test_download_not_ready(client, server, tmp_path, status, cls):
    tid = server.add_task(status)["task_id"]
    with pytest.raises(cls, match="not completed"):
        client.download(tid, tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == []


def test_download_gone_and_unknown(client, server, tmp_path):
    tid = server.add_task("completed", expired=True)["task_id"]
    with pytest.raises(mc.Gone, match="expired"):
        client.download(tid, tmp_path / "o.mp4")
    with pytest.raises(mc.NotFound):
        client.download("nope", tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == []


def test_content_disposition_parsing():
    f = mc._content_disposition_filename
    assert f('attachment; filename="a_protected.mp4"') == "a_protected.mp4"
    assert f("attachment; filename*=UTF-8''%D0%B2%D0%B8%D0%B4%D0%B5%D0%BE.mp4") == "видео.mp4"
    assert f('attachment; filename="../../etc/passwd"') == "passwd"
    assert f("attachment") is None and f(None) is None


# ---------------------------------------------------------------------------------------------------
# Other endpoints
# ---------------------------------------------------------------------------------------------------
def test_list_tasks_filters_and_paging(client, server):
    for i in range(5):
        server.add_task("completed" if i % 2 else "failed", user_id="alice" if i < 3 else "bob")
    page = client.list_tasks(user_id="alice", status="completed", limit=10, offset=0)
    assert page["total"] == 1 and page["tasks"][0]["user_id"] == "alice"
    q = server.requests[-1].url.params
    assert dict(q) == {"user_id": "alice", "status": "completed", "limit": "10", "offset": "0"}
    page = client.list_tasks(limit=2, offset=1)
    assert page["total"] == 5 and len(page["tasks"]) == 2 and page["offset"] == 1
    client.list_tasks()
    assert str(server.requests[-1].url) == f"{BASE}/tasks"


def test_cancel_and_delete(client, server):
    running = server.add_task("processing")["task_id"]
    done = server.add_task("completed")["task_id"]
    assert client.cancel(running)["status"] == "cancelled"
    assert client.cancel(done) == {"task_id": done, "deleted": True}
    with pytest.raises(mc.NotFound):
        client.cancel(done)
    assert server.requests[-1].method == "DELETE"


def test_stats_health(client, server):
    server.add_task("pending")
    stats = client.stats()
    assert stats["queue"]["pending"] == 1 and stats["queue"]["total"] == 1
    assert set(stats) == {"queue", "workers", "limits", "defaults"}
    assert client.health()["status"] == "ok"


def test_report_and_preview_not_found_until_server_has_them(client, server, tmp_path):
    tid = server.add_task("completed")["task_id"]
    with pytest.raises(mc.NotFound):
        client.report(tid)
    with pytest.raises(mc.NotFound):
        client.download_preview(tid, tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []
    server.then("GET", f"/report/{tid}", lambda r: httpx.Response(200, json={"faces_before": 3}))
    server.then("GET", f"/report/{tid}/preview.png", lambda r: httpx.Response(200, content=b"\x89PNG..."))
    assert client.report(tid) == {"faces_before": 3}
    assert client.download_preview(tid, tmp_path / "p.png").read_bytes() == b"\x89PNG..."


def test_task_id_is_url_quoted(client, server):
    with pytest.raises(mc.NotFound):
        client.status("a/b")
    assert server.requests[-1].url.raw_path == b"/status/a%2Fb"


def test_protect_end_to_end(client, server, video, tmp_path, sleeps):
    def finish_then_status(request):
        tid = request.url.path.rsplit("/", 1)[1]
        server.tasks[tid].update(status="completed", progress=100.0)
        server.files[tid] = FakeServer.VIDEO
        return httpx.Response(200, json=server.tasks[tid])

    server.then("GET", "/status/task0001", finish_then_status)
    out = client.protect(video, tmp_path / "out.mp4", epsilon=0.1, audio_level="strong")
    assert out.read_bytes() == FakeServer.VIDEO
    assert server.upload_log[-1]["fields"] == {"epsilon": "0.1", "audio_level": "strong"}


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def test_cli_health_stats_status_list(server, capsys):
    code, out, _ = run_cli(server, ["health"], capsys)
    assert code == 0 and json.loads(out)["status"] == "ok"
    tid = server.add_task("completed", user_id="u")["task_id"]
    code, out, _ = run_cli(server, ["stats"], capsys)
    assert code == 0 and json.loads(out)["queue"]["completed"] == 1
    code, out, _ = run_cli(server, ["status", tid], capsys)
    assert code == 0 and json.loads(out)["task_id"] == tid
    code, out, _ = run_cli(server, ["list", "--status", "completed", "--user-id", "u", "--limit", "5"], capsys)
    assert code == 0 and json.loads(out)["total"] == 1
    assert dict(server.requests[-1].url.params) == {"user_id": "u", "status": "completed", "limit": "5"}


def test_cli_server_option_before_command(server, capsys):
    code = mc.main(["--server", BASE, "health"], transport=StreamingMockTransport(server))
    assert code == 0 and json.loads(capsys.readouterr().out)["status"] == "ok"
    assert str(server.requests[-1].url) == f"{BASE}/health"


def test_cli_api_key_option(capsys):
    server = FakeServer(api_key="k")
    code, _, errtext = run_cli(server, ["stats"], capsys)
    assert code == 2 and errtext.strip() == "error: Invalid or missing API key"
    code, out, _ = run_cli(server, ["stats", "--api-key", "k"], capsys)
    assert code == 0


def test_cli_errors_and_exit_codes(server, capsys, tmp_path):
    code, _, errtext = run_cli(server, ["status", "nope"], capsys)
    assert code == 2 and errtext.strip() == "error: Task nope not found"
    server.then("GET", "/stats", lambda r: err(500, "database is locked"))
    code, _, errtext = run_cli(server, ["stats"], capsys)
    assert code == 1 and errtext.strip() == "error: database is locked"
    code, _, errtext = run_cli(server, ["upload", str(tmp_path / "missing.mp4")], capsys)
    assert code == 2 and "no such file" in errtext
    bad = tmp_path / "x.mp4"
    bad.write_text("text")
    code, _, errtext = run_cli(server, ["upload", str(bad), "-q"], capsys)
    assert code == 2 and errtext.strip() == "error: x.mp4 is not a video the server can read"


def test_cli_usage_errors(capsys):
    assert mc.main([]) == 2
    assert mc.main(["status"]) == 2
    assert mc.main(["protect", "in.mp4", "--epsilon", "lots"]) == 2
    assert mc.main(["--help"]) == 0
    assert "protect" in capsys.readouterr().out


def test_cli_connection_failed(capsys):
    def refuse(request):
        raise httpx.ConnectError("Connection refused")

    code = mc.main(["health", "--server", "http://127.0.0.1:9"], transport=StreamingMockTransport(refuse))
    errtext = capsys.readouterr().err
    assert code == 1 and errtext.startswith("error: cannot reach") and "python run_server.py" in errtext


def test_cli_protect_shows_progress_and_saves(server, capsys, video, tmp_path, sleeps):
    scripted = [{"status": "pending", "progress": 0.0, "eta_s": None},
                {"status": "processing", "progress": 50.0, "eta_s": 65.0},
                {"status": "completed", "progress": 100.0, "eta_s": 0.0}]

    def status(request):
        tid = request.url.path.rsplit("/", 1)[1]
        server.tasks[tid].update(scripted.pop(0))
        if server.tasks[tid]["status"] == "completed":
            server.files[tid] = FakeServer.VIDEO
        return httpx.Response(200, json=server.tasks[tid])

    server.then("GET", "/status/task0001", status, status, status)
    out_file = tmp_path / "out.mp4"
    code, out, errtext = run_cli(server, ["protect", str(video), "-o", str(out_file), "--epsilon", "0.1",
                                          "--video-strength", "1.5", "--every-n-frames", "3",
                                          "--audio-level", "сильный", "--user-id", "me", "--notes", "n"], capsys)
    assert code == 0, errtext
    assert out_file.read_bytes() == FakeServer.VIDEO
    assert str(out_file.resolve()) in out
    assert server.upload_log[-1]["fields"] == {"epsilon": "0.1", "video_strength": "1.5", "every_n_frames": "3",
                                               "audio_level": "сильный", "user_id": "me", "notes": "n"}
    # stderr is not a terminal here: periodic lines, no carriage returns
    assert "\r" not in errtext
    assert "upload" in errtext and "100.0%" in errtext and "task0001" in errtext
    assert "queued" in errtext
    assert "processing" in errtext and "50.0%" in errtext and "ETA 01:05" in errtext
    assert "download" in errtext


def test_cli_protect_default_output_name(server, capsys, video, sleeps):
    server.then("GET", "/status/task0001", lambda r: (
        server.tasks["task0001"].update(status="completed"), server.files.__setitem__("task0001", b"OUT"),
        httpx.Response(200, json=server.tasks["task0001"]))[2])
    code, out, errtext = run_cli(server, ["protect", str(video), "-q"], capsys)
    assert code == 0, errtext
    expected = video.with_name("clip_protected.mp4")
    assert expected.read_bytes() == b"OUT" and errtext == ""


def test_cli_protect_failed_task(server, capsys, video, sleeps):
    server.then("GET", "/status/task0001", lambda r: httpx.Response(
        200, json={**server.tasks["task0001"], "status": "failed", "error_message": "no video stream"}))
    code, _, errtext = run_cli(server, ["protect", str(video), "-q"], capsys)
    assert code == 1 and "error: task task0001 failed: no video stream" in errtext


def test_cli_wait_ctrl_c_prints_resume_hint(server, capsys, monkeypatch, sleeps):
    tid = server.add_task("processing")["task_id"]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(mc.time, "sleep", interrupt)
    code, out, errtext = run_cli(server, ["wait", tid], capsys)
    assert code == 130 and out == ""
    assert f"python client.py wait {tid}" in errtext


def test_cli_protect_ctrl_c_prints_resume_hint(server, capsys, monkeypatch, video, sleeps):
    monkeypatch.setattr(mc.time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, errtext = run_cli(server, ["protect", str(video), "-o", "o.mp4"], capsys)
    assert code == 130 and "python client.py wait task0001" in errtext
    assert "python client.py download task0001 -o o.mp4" in errtext


def test_cli_protect_ctrl_c_during_download(server, capsys, monkeypatch, video, sleeps):
    def finished(request):
        server.tasks["task0001"].update(status="completed")
        server.files["task0001"] = FakeServer.VIDEO
        return httpx.Response(200, json=server.tasks["task0001"])

    def interrupted(request):
        raise KeyboardInterrupt

    server.then("GET", "/status/task0001", finished)
    server.then("GET", "/download/task0001", interrupted)
    code, _, errtext = run_cli(server, ["protect", str(video), "-o", "o.mp4"], capsys)
    assert code == 130 and "python client.py download task0001 -o o.mp4" in errtext


def test_cli_wait_download_cancel_upload(server, capsys, tmp_path, video, sleeps):
    tid = server.add_task("completed")["task_id"]
    code, out, _ = run_cli(server, ["wait", tid, "--timeout", "5"], capsys)
    assert code == 0 and json.loads(out)["status"] == "completed"
    code, out, _ = run_cli(server, ["download", tid, "-o", str(tmp_path / "d.mp4")], capsys)
    assert code == 0 and (tmp_path / "d.mp4").read_bytes() == FakeServer.VIDEO
    assert out.strip() == str((tmp_path / "d.mp4").resolve())
    code, out, _ = run_cli(server, ["cancel", tid], capsys)
    assert code == 0 and json.loads(out) == {"task_id": tid, "deleted": True}
    code, out, _ = run_cli(server, ["upload", str(video), "--epsilon", "0.05", "-q"], capsys)
    assert code == 0 and json.loads(out)["epsilon"] == 0.05
    code, _, errtext = run_cli(server, ["upload", str(video), "--epsilon", "0.5", "-q"], capsys)
    assert code == 2 and "epsilon" in errtext
    pending = server.add_task("pending")["task_id"]
    code, _, errtext = run_cli(server, ["download", pending], capsys)
    assert code == 2 and "not completed" in errtext


def test_progress_bar_tty_uses_carriage_return(monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    stream = FakeTTY()
    bar = mc.ProgressBar("upload", stream=stream)
    bar.REDRAW_EVERY = 0
    bar.bytes(0, 1000)
    bar.bytes(500, 1000)
    bar.bytes(1000, 1000)
    bar.finish("done")
    text = stream.getvalue()
    assert text.count("\r") >= 3 and "50.0%" in text and "100.0%" in text and text.endswith("\n")
    assert text.count("\n") == 1


def test_progress_bar_non_tty_prints_periodic_lines():
    stream = io.StringIO()
    bar = mc.ProgressBar("processing", stream=stream)
    for p in range(0, 101):
        bar.task({"status": "processing", "progress": float(p), "eta_s": 100 - p})
    lines = stream.getvalue().splitlines()
    assert 5 <= len(lines) <= 15 and "\r" not in stream.getvalue()


REPORT = {"psnr": 44.2, "ssim": 0.991, "protect_seconds": 3.1,
          "detection": {"mtcnn": {"white_box": True, "original_rate": 1.0, "protected_rate": 0.25,
                                  "protection": 0.75, "frames": 4}},
          "speaker": {"similarity": 0.61, "threshold": 0.7232, "match": False, "white_box": True}}


def _completes_with_report(server):
    def status(request):
        server.tasks["task0001"].update(status="completed", progress=100.0)
        server.files["task0001"] = FakeServer.VIDEO
        return httpx.Response(200, json=server.tasks["task0001"])

    server.then("GET", "/status/task0001", status, status)
    server.then("GET", "/report/task0001", lambda r: httpx.Response(200, json=REPORT))


def test_cli_protect_ends_with_the_reports_verdict(server, capsys, video, tmp_path, sleeps):
    _completes_with_report(server)
    code, out, errtext = run_cli(server, ["protect", str(video), "-o", str(tmp_path / "o.mp4"), "-q"], capsys)
    assert code == 0, errtext
    saved, verdict = out.strip().splitlines()
    assert saved == f"protected video saved to {(tmp_path / 'o.mp4').resolve()}"
    assert verdict == ("report (white-box surrogates, an upper bound): faces still found by MTCNN in 25% of "
                       "sampled frames (original 100%); voice no longer matches the speaker (similarity 0.61, "
                       "threshold 0.72); picture PSNR 44.2 dB, SSIM 0.991")


def test_cli_protect_json_for_scripts(server, capsys, video, tmp_path, sleeps):
    _completes_with_report(server)
    code, out, errtext = run_cli(server, ["protect", str(video), "-o", str(tmp_path / "o.mp4"), "-q", "--json"],
                                 capsys)
    assert code == 0, errtext
    result = json.loads(out)
    assert result["report"] == REPORT and result["task"]["status"] == "completed"
    assert result["saved_to"] == str((tmp_path / "o.mp4").resolve())


def test_cli_a_closed_pipe_is_not_an_error(server, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    server.add_task("pending")
    monkeypatch.setattr("media_cleaner_client.cli._print_json", broken)
    code, out, errtext = run_cli(server, ["stats"], capsys)
    assert code == 1 and errtext == ""


def test_cli_hints_name_a_command_that_exists(monkeypatch):
    # Run as `.venv/bin/python client.py`: the hint is the same, never a bare `python` (missing on Debian).
    assert mc.CLI_NAME.endswith("client.py") and not mc.CLI_NAME.startswith("python ")
    interpreter = mc.CLI_NAME.rsplit(" ", 1)[0]
    assert interpreter == "python3" or Path(interpreter).resolve() == Path(sys.executable).resolve()
