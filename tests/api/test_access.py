"""API keys and per-user isolation, queue and disk limits, retention, webhooks (hardening issue)."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import stored_output, stored_upload, wait_for
from support.media_factory import make_video

from media_cleaner.protection.seams import PassThroughVideo, Protectors
from media_cleaner.service.auth import KeyRing, add_key, hash_key, revoke_user
from media_cleaner.service.retention import sweep
from media_cleaner.service.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER

# Every API test here runs on the embedded default and on the distributed backend (conftest.py).
BOTH_BACKENDS = True

KEYS = {"alice": "key-of-alice", "bob": "key-of-bob", "root": "key-of-root"}
INLINE = ",".join(f"{hash_key(k)}:{u}:{'admin' if u == 'root' else 'user'}" for u, k in KEYS.items())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("m") / "clip.mp4", seconds=0.5, size="160x120", fps=10)


def upload(api, clip, key=None, **fields):
    headers = {"X-API-Key": key} if key else {}
    with open(clip, "rb") as fh:
        return api.post("/upload", files={"file": ("clip.mp4", fh, "video/mp4")}, headers=headers,
                        data={k: str(v) for k, v in fields.items()})


def as_(user):
    return {"X-API-Key": KEYS[user]}


def test_keys_are_required_everywhere_but_health(api_factory, clip):
    api = api_factory(api_keys=INLINE)
    assert api.get("/health").status_code == 200
    for method, url in [("get", "/stats"), ("get", "/tasks"), ("get", "/status/x"), ("get", "/download/x"),
                        ("delete", "/tasks/x")]:
        response = getattr(api, method)(url)
        assert response.status_code == 401 and "X-API-Key" in response.json()["detail"], url
        assert getattr(api, method)(url, headers={"X-API-Key": "wrong"}).status_code == 401
    assert upload(api, clip).status_code == 401


def test_users_see_only_their_own_tasks(api_factory, clip, tmp_path):
    api = api_factory(api_keys=INLINE)
    mine = upload(api, clip, KEYS["alice"]).json()
    assert mine["user_id"] == "alice"
    theirs = upload(api, clip, KEYS["bob"]).json()
    claim = upload(api, clip, KEYS["alice"], user_id="bob")
    assert claim.status_code == 403 and "not yours" in claim.json()["detail"]
    for task in (mine, theirs):
        owner = task["user_id"]
        other = "bob" if owner == "alice" else "alice"
        assert api.get(f"/status/{task['task_id']}", headers=as_(owner)).status_code == 200
        hidden = api.get(f"/status/{task['task_id']}", headers=as_(other))
        assert hidden.status_code == 404 and "No task with id" in hidden.json()["detail"]   # not 403: no probing
        assert api.get(f"/download/{task['task_id']}", headers=as_(other)).status_code == 404
        assert api.delete(f"/tasks/{task['task_id']}", headers=as_(other)).status_code == 404
        assert api.get(f"/status/{task['task_id']}", headers=as_("root")).status_code == 200
    listed = api.get("/tasks", params={"user_id": "bob"}, headers=as_("alice")).json()
    assert [t["task_id"] for t in listed["tasks"]] == [mine["task_id"]]
    assert api.get("/tasks", headers=as_("root")).json()["total"] == 2
    admin_for_bob = upload(api, clip, KEYS["root"], user_id="bob").json()
    assert admin_for_bob["user_id"] == "bob"


def test_keys_file_add_list_revoke(tmp_path):
    path = tmp_path / "keys.txt"
    key = add_key(path, "carol", "admin")
    assert key not in path.read_text() and hash_key(key) in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ring = KeyRing.load(path, None)
    assert ring.authenticate(key).user_id == "carol" and ring.authenticate(key).is_admin
    assert ring.authenticate(key + "x") is None
    assert revoke_user(path, "carol") == 1 and not KeyRing.load(path, None).configured


class _Slow(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        time.sleep(0.5)
        return frame


def test_queue_full_is_429_with_retry_after(api_factory, clip):
    api = api_factory(lambda params, threads: Protectors(_Slow(), None), max_pending_tasks=1,
                      max_concurrent_tasks=1)
    running = upload(api, clip).json()
    wait_for(api, running["task_id"], statuses=("processing",))   # the one worker is busy: the queue fills
    assert upload(api, clip).status_code == 202
    full = upload(api, clip)
    assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
    assert "queue is full" in full.json()["detail"]


def test_per_user_queue_share(api_factory, clip):
    api = api_factory(lambda params, threads: Protectors(_Slow(), None), api_keys=INLINE, max_pending_per_user=1)
    running = upload(api, clip, KEYS["alice"]).json()
    wait_for(api, running["task_id"], statuses=("processing",), headers=as_("alice"))
    assert upload(api, clip, KEYS["alice"]).status_code == 202
    assert upload(api, clip, KEYS["alice"]).status_code == 429
    assert upload(api, clip, KEYS["bob"]).status_code == 202


def test_low_disk_is_507(api_factory, clip, tmp_path):
    api = api_factory(min_free_disk_gb=10 ** 6)
    response = upload(api, clip)
    assert response.status_code == 507 and "low on disk space" in response.json()["detail"]
    assert not any((tmp_path / "videos_input").iterdir())


def test_too_long_is_413(api_factory, clip):
    response = upload(api_factory(max_duration_s=0.1), clip)
    assert response.status_code == 413 and "minutes long" in response.json()["detail"]


def test_retention_drops_inputs_expires_outputs_prunes_tasks(api_factory, clip, tmp_path):
    api = api_factory(output_retention_hours=1, task_retention_days=2)
    task = upload(api, clip).json()
    done = wait_for(api, task["task_id"])
    # The upload goes once the task is done: the store's listener deletes it just after the status is
    # committed (in that order, so a crash between the two cannot lose a finished task's state), and a
    # lock-free status read can land in between.
    upload_path, deadline = stored_upload(tmp_path, task), time.monotonic() + 5
    while upload_path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not upload_path.exists()
    service = api.app.state.service
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert sweep(service.settings, service.store, later) == {"expired": 1, "pruned": 0}
    assert not stored_output(tmp_path, done).exists()
    gone = api.get(f"/download/{task['task_id']}")
    assert gone.status_code == 410 and "expired" in gone.json()["detail"]
    assert sweep(service.settings, service.store, later + timedelta(days=3)) == {"expired": 0, "pruned": 1}
    assert api.get(f"/status/{task['task_id']}").status_code == 404


def test_keep_inputs_keeps_them(api_factory, clip, tmp_path):
    api = api_factory(keep_inputs=True)
    task = upload(api, clip).json()
    wait_for(api, task["task_id"])
    assert (stored_upload(tmp_path, task)).exists()


class Receiver:
    """A local HTTP endpoint that records webhook deliveries; the first ``failures`` answers are 500."""

    def __init__(self, failures: int = 0):
        self.calls: list[tuple[dict, bytes]] = []
        self.failures = failures
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                failing = len(receiver.calls) <= receiver.failures
                self.send_response(500 if failing else 204)
                self.end_headers()
                if not failing:
                    receiver.got.set()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_webhook_is_signed_and_retried(api_factory, clip):
    receiver = Receiver(failures=1)
    try:
        api = api_factory(webhook_allow_private=True, webhook_secret="s3cret")
        task = upload(api, clip, webhook_url=receiver.url).json()
        wait_for(api, task["task_id"])
        assert receiver.got.wait(15), "webhook never delivered"
        headers, body = receiver.calls[-1]
        assert len(receiver.calls) == 2                              # one 500, then retried
        expected = hmac.new(b"s3cret", headers[TIMESTAMP_HEADER].encode() + b"." + body, hashlib.sha256)
        assert headers[SIGNATURE_HEADER] == "sha256=" + expected.hexdigest()
        sent = json.loads(body)
        assert sent["task_id"] == task["task_id"] and sent["status"] == "completed"
        for _ in range(50):
            if api.get(f"/status/{task['task_id']}").json()["webhook_status"] == "delivered":
                break
            threading.Event().wait(0.1)
        assert api.get(f"/status/{task['task_id']}").json()["webhook_attempts"] == 2
    finally:
        receiver.close()
