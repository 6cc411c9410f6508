"""The holes a hostile trial found (security and integrity issue), each closed: playlist-like uploads, form
floods, a chunked upload on a full disk, durations hidden in a header, damaged files that lose frames, keys in
URLs, webhook URLs that cannot be delivered, and how a crash of the server is counted."""
from __future__ import annotations

import logging
import random
import struct
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from conftest import wait_for
from support.media_factory import make_video

from media_cleaner.service.auth import hash_key
from media_cleaner.service.logs import NoSecretsInURLs
from media_cleaner.service.tasks import Task, TaskStatus
from media_cleaner.media.pipeline import protect_video
from media_cleaner.media.probe import MediaError, probe_media
from media_cleaner.protection.seams import PassThroughVideo, Protectors
from media_cleaner.service.store.json_store import MAX_SERVER_CRASHES, JsonTaskStore
from media_cleaner.service.webhooks import WebhookSender

KEYS = {"alice": "key-of-alice", "bob": "key-of-bob"}
INLINE = ",".join(f"{hash_key(key)}:{user}:user" for user, key in KEYS.items())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("m") / "clip.mp4", seconds=1, size="160x120", fps=25)


def post_file(api, name: str, content: bytes, **fields):
    return api.post("/upload", files={"file": (name, content, "video/mp4")}, data=fields)


# --- playlists: one user reading another's video ---------------------------------------------------------

def test_a_concat_playlist_cannot_read_a_sibling_file_anywhere(tmp_path, clip):
    """The probe refuses it, and so would the decoder if a playlist ever got past the probe."""
    sibling = tmp_path / "bob.mp4"
    sibling.write_bytes(clip.read_bytes())
    playlist = tmp_path / "alice.mp4"
    playlist.write_text("ffconcat version 1.0\nfile 'bob.mp4'\n")
    with pytest.raises(MediaError, match="not in a video format we accept"):
        probe_media(playlist)
    forged = replace(probe_media(sibling), path=str(playlist))   # as if the probe had been fooled
    with pytest.raises(MediaError):
        protect_video(playlist, tmp_path / "out.mp4", Protectors(PassThroughVideo(), None), info=forged,
                      temp_dir=tmp_path / "scratch")
    assert not (tmp_path / "out.mp4").exists()


# --- form fields ------------------------------------------------------------------------------------------

def test_a_flood_of_form_fields_is_refused_early(api, clip):
    many = [("f%d" % i, (None, b"x")) for i in range(100)] + [("file", ("clip.mp4", clip.read_bytes()))]
    response = api.post("/upload", files=many)
    assert response.status_code == 422 and "Too many parts" in response.json()["detail"]
    assert len(response.json()["detail"]) < 300   # not a list of every name

    big = [(f"notes{i}", (None, b"n" * 60000)) for i in range(20)] + [("file", ("clip.mp4", clip.read_bytes()))]
    response = api.post("/upload", files=big)
    assert response.status_code == 413


def test_unknown_fields_are_named_briefly(api, clip):
    fields = {f"extra{i}": "1" for i in range(20)}
    response = post_file(api, "clip.mp4", clip.read_bytes(), **fields)
    assert response.status_code == 422 and "and 15 more" in response.json()["detail"]


# --- the disk ---------------------------------------------------------------------------------------------

def test_a_chunked_upload_on_a_full_disk_is_507_with_retry_after(api_factory, clip):
    api = api_factory(min_free_disk_gb=0)   # the up-front check passes: the body declares no length
    api.app.state.service.settings.min_free_disk_gb = 10 ** 6   # then the disk "fills up"
    boundary = "chunky"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + clip.read_bytes() + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    response = api.post("/upload", content=chunks(),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 507 and "low on disk space" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) > 0
    settings = api.app.state.service.settings
    assert not [p for p in settings.input_dir.iterdir() if p.is_file()]


def test_a_declared_upload_on_a_full_disk_says_when_to_retry(api_factory, clip):
    response = post_file(api_factory(min_free_disk_gb=10 ** 6), "clip.mp4", clip.read_bytes())
    assert response.status_code == 507 and int(response.headers["Retry-After"]) > 0


# --- duration -------------------------------------------------------------------------------------------

def _frames_ten_hours_apart_with_a_two_second_header(path: Path) -> Path:
    make_video(path, seconds=0.08, size="160x120", fps=25, audio=False,
               retime="'if(eq(N,0),0,36000/TB)'")
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")          # the Segment's Duration element (milliseconds, a float)
    assert at > 0 and data[at + 2] == 0x88
    data[at + 3:at + 11] = struct.pack(">d", 2000.0)
    path.write_bytes(bytes(data))
    return path


def test_the_duration_limit_reads_the_frames_not_the_header(api_factory, tmp_path):
    bomb = _frames_ten_hours_apart_with_a_two_second_header(tmp_path / "bomb.mkv")
    assert probe_media(bomb).duration_s > 35000
    api = api_factory(max_duration_s=3600)
    response = post_file(api, "bomb.mkv", bomb.read_bytes())
    assert response.status_code == 413 and "minutes long" in response.json()["detail"]


def test_the_pipeline_checks_the_decoded_timestamps_too(tmp_path, clip):
    with pytest.raises(MediaError, match="runs longer than this server accepts"):
        protect_video(clip, tmp_path / "out.mp4", Protectors(PassThroughVideo(), None), temp_dir=tmp_path / "scratch",
                      max_duration_s=0.5)
    assert not (tmp_path / "out.mp4").exists()


# --- damaged files ----------------------------------------------------------------------------------------

def test_a_damaged_file_fails_instead_of_losing_frames(api, tmp_path):
    source = make_video(tmp_path / "whole.mp4", seconds=2, size="320x240", fps=25)
    data = bytearray(source.read_bytes())
    start = data.find(b"mdat") + 20000
    noise = random.Random(1)
    data[start:start + 20000] = bytes(noise.randrange(256) for _ in range(20000))
    assert probe_media(source).frame_count == 50
    task = post_file(api, "damaged.mp4", bytes(data)).json()
    done = wait_for(api, task["task_id"])
    assert done["status"] == "failed", done
    assert "The video is damaged" in done["error_message"] and "of its 50 frames" in done["error_message"]


# --- keys -------------------------------------------------------------------------------------------------

def test_a_key_in_the_url_is_refused_and_never_logged(api_factory):
    api = api_factory(api_keys=INLINE)
    response = api.get(f"/tasks?api_key={KEYS['alice']}")
    assert response.status_code == 400 and "X-API-Key header" in response.json()["detail"]
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", f"/tasks?limit=5&api_key={KEYS['alice']}&x=1", "1.1", 400),
                               None)
    assert NoSecretsInURLs().filter(record)
    assert KEYS["alice"] not in record.getMessage() and "api_key=***&x=1" in record.getMessage()


def test_every_operation_that_takes_a_key_documents_its_401(api):
    schema = api.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path != "/health":
                assert "401" in operation["responses"], (method, path)


# --- webhooks ---------------------------------------------------------------------------------------------

def _finished(task_id: str, url: str) -> Task:
    return Task(task_id=task_id, original_filename="a.mp4", status=TaskStatus.completed, epsilon=0.12,
                video_strength=1.0, audio_level="weak", every_n_frames=10, webhook_url=url)


def test_one_undeliverable_url_does_not_stop_the_sender():
    delivered, recorded = [], []

    def receiver(request):
        delivered.append(str(request.url))
        return httpx.Response(200)

    sender = WebhookSender(secret=None, allow_private=True, max_attempts=1, timeout_s=5,
                           record=lambda *args: recorded.append(args), transport=httpx.MockTransport(receiver))
    sender.start()
    try:
        sender.notify(_finished("poison", "http://93.184.216.34/a\r\nX: 1"))   # stored by an older version
        sender.notify(_finished("good", "http://93.184.216.34/hook"))
        deadline = time.monotonic() + 10
        while len(recorded) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
    assert ("poison", "failed", 1) in recorded and ("good", "delivered", 1) in recorded
    assert delivered == ["http://93.184.216.34/hook"]


# --- crashes of the server -------------------------------------------------------------------------------

def test_a_server_crash_is_not_charged_to_tasks_that_ran_in_engine_processes(tmp_path):
    store = JsonTaskStore(tmp_path / "tasks.json")
    store.open()
    store.add(Task(task_id="t", original_filename="a.mp4", status=TaskStatus.processing, attempts=1,
                   epsilon=0.12, video_strength=1.0, audio_level="weak", every_n_frames=10))
    for crash in range(1, MAX_SERVER_CRASHES):
        (task,) = store.recover(max_attempts=3, charge_crashes=False)
        assert (task.status, task.attempts, task.server_crashes) == (TaskStatus.pending, 0, crash)
        store.update("t", status=TaskStatus.processing, attempts=1)   # claimed again, crashed again
    (task,) = store.recover(max_attempts=3, charge_crashes=False)
    assert task.status == TaskStatus.failed and f"stopped unexpectedly {MAX_SERVER_CRASHES} times" in \
        task.error_message
    store.close()
