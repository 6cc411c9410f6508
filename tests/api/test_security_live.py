"""The two worst holes, end to end through a real server process with two API keys: a playlist upload that
read another user's video, and a webhook URL that silenced every webhook."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from support.media_factory import make_video
from support.live_server import Server

from media_cleaner.service.auth import hash_key
from media_cleaner.service.tasks import Task, TaskStatus
from media_cleaner.service.store.json_store import JsonTaskStore

KEYS = {"alice": "key-of-alice", "bob": "key-of-bob"}
INLINE = ",".join(f"{hash_key(key)}:{user}:user" for user, key in KEYS.items())
TESTS = Path(__file__).resolve().parents[1]


def as_(user: str) -> dict:
    return {"X-API-Key": KEYS[user]}


@pytest.fixture
def engines_from_tests(monkeypatch, tmp_path):
    """Engine processes import the scripted (pass-through) factory from tests/."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("MC_TEST_DIR", str(tmp_path))


def test_a_playlist_upload_cannot_read_another_users_video(tmp_path, engines_from_tests):
    clip = make_video(tmp_path / "bob.mp4", seconds=1, size="160x120", fps=25)
    server = Server(tmp_path / "data", api_keys=INLINE, keep_inputs="true", warm_up="false", task_reports="false",
                    engine_factory="support.engine_factories:scripted").start()
    try:
        with open(clip, "rb") as fh:
            bob = httpx.post(server.url + "/upload", headers=as_("bob"),
                             files={"file": ("bob.mp4", fh, "video/mp4")}, timeout=30).json()
        bob_id = bob["task_id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.url}/status/{bob_id}", headers=as_("bob")).json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (tmp_path / "data" / "videos_input" / f"{bob_id}.mp4").exists()   # the file the attack names

        answers = []
        for named in (f"{bob_id}.mp4", "0123456789abcdef0123456789abcdef.mp4"):   # a live id and a random one
            playlist = f"ffconcat version 1.0\nfile '{named}'\n".encode()
            answer = httpx.post(server.url + "/upload", headers=as_("alice"),
                                files={"file": ("x.mp4", playlist, "video/mp4")}, timeout=30)
            answers.append((answer.status_code, answer.json()["detail"]))
        assert answers[0] == answers[1]   # ids cannot be probed either
        assert answers[0][0] == 415 and "not in a video format we accept" in answers[0][1]
        assert httpx.get(server.url + "/tasks", headers=as_("alice")).json()["total"] == 0

        # A key in the URL is refused, and server.log never shows it.
        leaked = httpx.get(f"{server.url}/tasks?api_key={KEYS['alice']}")
        assert leaked.status_code == 400
        log = (tmp_path / "data" / "server_logs" / "server.log").read_text()
        assert "api_key=***" in log and KEYS["alice"] not in log
    finally:
        server.stop()


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_poisoned_webhook_url_silences_nobody(tmp_path):
    """An old tasks.json holds a webhook URL with CR/LF (accepted before it was checked): it used to kill the
    sender's thread at every start. Now it fails alone; the good one is delivered; and the API refuses such
    URLs at upload."""
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_port}/hook"
    _Receiver.received = []
    data = tmp_path / "data"
    (data / "queue_db").mkdir(parents=True)
    store = JsonTaskStore(data / "queue_db" / "tasks.json")
    store.open()
    for task_id, url in (("a" * 32, "http://127.0.0.1:9/x\r\nX-Injected: 1"), ("b" * 32, hook)):
        store.add(Task(task_id=task_id, original_filename="old.mp4", status=TaskStatus.completed, epsilon=0.12,
                       video_strength=1.0, audio_level="weak", every_n_frames=10, user_id="alice",
                       webhook_url=url, webhook_status="pending"))
    store.close()

    server = Server(data, api_keys=INLINE, warm_up="false", task_reports="false", engine_processes="false",
                    webhook_allow_private="true").start()
    try:
        deadline = time.monotonic() + 30
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [task["task_id"] for task in _Receiver.received] == ["b" * 32]
        poisoned = httpx.get(f"{server.url}/status/{'a' * 32}", headers=as_("alice")).json()
        assert poisoned["webhook_status"] == "failed"

        refused = httpx.post(server.url + "/upload", headers=as_("bob"),
                             data={"webhook_url": "http://93.184.216.34/a\r\nX: 1"},
                             files={"file": ("x.mp4", b"\x00" * 100, "video/mp4")}, timeout=30)
        assert refused.status_code == 422 and "control characters" in refused.json()["detail"]
    finally:
        server.stop()
        receiver.shutdown()


def test_a_request_that_is_not_http_gets_a_json_error(tmp_path):
    import socket
    server = Server(tmp_path / "data", warm_up="false", task_reports="false").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
        assert "not valid HTTP" in json.loads(body)["detail"]
    finally:
        server.stop()
