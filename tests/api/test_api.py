"""Every endpoint and error status of the REST API, against the real store, workers and pipeline."""
from __future__ import annotations

import json
import logging
import time

import pytest
from conftest import stored_output, stored_upload, wait_for
from support.media_factory import make_video

from media_cleaner.service.logs import QuietPolls
from media_cleaner.protection.seams import PassThroughAudio, PassThroughVideo, Protectors

# Every API test here runs on the embedded default and on the distributed backend (conftest.py).
BOTH_BACKENDS = True


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """A 1 s 160x120 clip with stereo sound."""
    path = tmp_path_factory.mktemp("media") / "talk.mp4"
    make_video(path, seconds=1, size="160x120", fps=10)
    return path


class SlowVideo(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        time.sleep(0.1)
        return frame


class FailingVideo(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        if index == 3:
            raise RuntimeError("the model ran out of memory")
        return frame


def slow_factory(params, threads):
    return Protectors(SlowVideo(), PassThroughAudio())


def upload(client, path, name=None, **fields):
    with open(path, "rb") as fh:
        return client.post("/upload", files={"file": (name or path.name, fh, "video/mp4")},
                           data={k: str(v) for k, v in fields.items()})


def data_files(root):
    """Every file the service keeps about tasks (not logs, not the store itself)."""
    return sorted(p.relative_to(root).as_posix() for folder in ("videos_input", "videos_output", "videos_temp")
                  for p in (root / folder).rglob("*") if p.is_file())


def stored_tasks(root):
    return json.loads((root / "queue_db" / "tasks.json").read_text())["tasks"] \
        if (root / "queue_db" / "tasks.json").exists() else []


def test_upload_status_download_round_trip(api, clip, tmp_path):
    response = upload(api, clip, epsilon=0.08, video_strength=1.5, every_n_frames=5, audio_level="средний",
                      user_id="alice", notes="holiday")
    assert response.status_code == 202, response.text
    task = response.json()
    assert response.headers["location"] == f"/status/{task['task_id']}"
    assert (task["epsilon"], task["video_strength"], task["every_n_frames"], task["audio_level"]) == \
        (0.08, 1.5, 5, "medium")
    assert task["media"]["frames"] == 10 and task["media"]["has_audio"] is True
    done = wait_for(api, task["task_id"])
    assert done["status"] == "completed", done
    assert done["progress"] == 100 and done["attempts"] == 1
    assert "output_video" not in done and "input_video" not in done   # server paths stay internal
    assert stored_output(tmp_path, done) == tmp_path / f"videos_output/{task['task_id']}_talk_protected.mp4"
    assert done["download_url"] == f"/download/{task['task_id']}"

    file = api.get(done["download_url"])
    assert file.status_code == 200 and file.headers["content-type"] == "video/mp4"
    assert 'filename="talk_protected.mp4"' in file.headers["content-disposition"]
    assert file.content == stored_output(tmp_path, done).read_bytes()
    part = api.get(done["download_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == file.content[:100]


def test_defaults_come_from_the_server_settings(api_factory, clip):
    api = api_factory(default_epsilon=0.05, default_audio_level="none")
    task = upload(api, clip).json()
    assert (task["epsilon"], task["audio_level"], task["every_n_frames"]) == (0.05, "none", 10)


@pytest.mark.parametrize("field,value,fragment", [
    ("epsilon", "0.5", "epsilon 0.5 is above the maximum 0.2"),
    ("epsilon", "NaN", "epsilon must be a finite number"),
    ("epsilon", "inf", "epsilon must be a finite number"),
    ("video_strength", "-1", "video_strength -1 is below the minimum 1"),
    ("every_n_frames", "ten", "every_n_frames must be a number"),
    ("audio_level", "loud", "audio_level 'loud' is not one of"),
    ("webhook_url", "ftp://example.com/hook", "webhook_url must be an http"),
    ("user_id", "u" * 201, "user_id is 201 characters long"),
    ("colour", "red", "Unknown field(s) 'colour'"),
])
def test_bad_parameters_are_422_and_leave_nothing(api, clip, tmp_path, field, value, fragment):
    response = upload(api, clip, **{field: value})
    assert response.status_code == 422
    assert fragment in response.json()["detail"]
    assert data_files(tmp_path) == [] and stored_tasks(tmp_path) == []


def test_bad_files_get_clear_errors_and_leave_nothing(api, clip, tmp_path):
    text = tmp_path / "x.mp4"
    text.write_text("this is not a video\n" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    cases = [(text, "x.mp4", 415, "could not be read as a video"),
             (empty, "empty.mp4", 400, "empty"),
             (truncated, "cut.mp4", 415, ""),
             (clip, "notes.txt", 415, "not a supported video type"),
             (clip, "noext", 415, "not a supported video type")]
    for path, name, status, fragment in cases:
        response = upload(api, path, name=name)
        assert response.status_code == status, (name, response.text)
        detail = response.json()["detail"]
        assert fragment in detail and str(tmp_path) not in detail and "Traceback" not in detail
    for stray in (text, empty, truncated):
        stray.unlink()
    assert data_files(tmp_path) == [] and stored_tasks(tmp_path) == []
    assert api.get("/health").json()["status"] == "ok"


def test_malformed_requests(api, clip, tmp_path):
    no_file = api.post("/upload", data={"epsilon": "0.1"})
    assert no_file.status_code in (415, 422)
    no_file = api.post("/upload", files={"epsilon": (None, "0.1")})
    assert no_file.status_code == 422 and "field 'file'" in no_file.json()["detail"]
    not_multipart = api.post("/upload", content=clip.read_bytes(), headers={"content-type": "video/mp4"})
    assert not_multipart.status_code == 415 and "multipart/form-data" in not_multipart.json()["detail"]
    data = clip.read_bytes()
    two = api.post("/upload", files=[("file", ("a.mp4", data, "video/mp4")), ("file", ("b.mp4", data, "video/mp4"))])
    assert two.status_code == 422 and "exactly one file" in two.json()["detail"]
    wrong_field = api.post("/upload", files={"video": ("a.mp4", data, "video/mp4")})
    assert wrong_field.status_code == 422
    assert data_files(tmp_path) == [] and stored_tasks(tmp_path) == []


def test_path_traversal_and_unicode_names_are_tamed(api, clip, tmp_path):
    # Built by hand: HTTP clients escape a NUL in a file name, a hostile client does not.
    name = "../../etc/пример видео\x00.mp4".encode()
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name + b"\"\r\n"
            b"Content-Type: video/mp4\r\n\r\n" + clip.read_bytes() + b"\r\n--XyZ--\r\n")
    response = api.post("/upload", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 202, response.text
    task = response.json()
    assert task["original_filename"] == "пример видео.mp4"
    assert stored_upload(tmp_path, task) == tmp_path / f"videos_input/{task['task_id']}.mp4"
    done = wait_for(api, task["task_id"])
    assert stored_output(tmp_path, done).name == f"{task['task_id']}_пример_видео_protected.mp4"
    assert stored_output(tmp_path, done).exists()


def test_size_limit_is_enforced_while_streaming(api_factory, clip, tmp_path):
    api = api_factory(max_video_size_gb=clip.stat().st_size / 2 / 1024 ** 3)
    response = upload(api, clip)
    assert response.status_code == 413 and "larger than this server's limit" in response.json()["detail"]
    assert data_files(tmp_path) == [] and stored_tasks(tmp_path) == []


def test_unknown_ids_are_404(api):
    for method, url in [("get", "/status/nope"), ("get", "/download/nope"), ("delete", "/tasks/nope")]:
        response = getattr(api, method)(url)
        assert response.status_code == 404 and "No task with id 'nope'" in response.json()["detail"]


def test_download_before_completion_is_409_and_cancel_pending_is_immediate(api_factory, clip, tmp_path):
    api = api_factory(slow_factory)
    running = upload(api, clip).json()
    queued = upload(api, clip).json()      # one worker: this one waits
    assert api.get(f"/download/{queued['task_id']}").status_code == 409
    cancelled = api.delete(f"/tasks/{queued['task_id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert not stored_upload(tmp_path, queued).exists()
    wait_for(api, running["task_id"])
    assert api.get(f"/status/{queued['task_id']}").json()["status"] == "cancelled"
    assert "cancelled" in api.get(f"/download/{queued['task_id']}").json()["detail"]


def test_cancel_running_task_stops_within_a_second(api_factory, clip, tmp_path):
    api = api_factory(slow_factory)
    task = upload(api, clip).json()
    wait_for(api, task["task_id"], statuses=("processing",))
    time.sleep(0.3)
    started = time.monotonic()
    assert api.delete(f"/tasks/{task['task_id']}").json()["status"] == "cancelled"
    # Stopped: no worker busy with it, no partial output, no temp files, the input removed.
    while api.get("/stats").json()["workers"]["busy"] or data_files(tmp_path):
        assert time.monotonic() - started < 1.5, f"still running after cancel: {data_files(tmp_path)}"
        time.sleep(0.02)
    assert wait_for(api, task["task_id"])["status"] == "cancelled"


def test_a_failing_task_does_not_kill_its_worker(api_factory, clip):
    calls = []

    def factory(params, threads):
        calls.append(1)
        video = FailingVideo() if len(calls) == 1 else PassThroughVideo()
        return Protectors(video, PassThroughAudio())

    api = api_factory(factory)
    bad = upload(api, clip).json()
    good = upload(api, clip).json()
    failed = wait_for(api, bad["task_id"])
    assert failed["status"] == "failed"
    assert "the model ran out of memory" in failed["error_message"]
    assert wait_for(api, good["task_id"])["status"] == "completed"
    assert api.get(f"/download/{bad['task_id']}").status_code == 409


def test_delete_finished_task_removes_its_files(api, clip, tmp_path):
    task = upload(api, clip).json()
    done = wait_for(api, task["task_id"])
    assert stored_output(tmp_path, done).exists()
    response = api.delete(f"/tasks/{task['task_id']}")
    assert response.json() == {"task_id": task["task_id"], "deleted": True}
    assert data_files(tmp_path) == [] and api.get(f"/status/{task['task_id']}").status_code == 404


def test_list_filters_and_pages(api_factory, clip):
    api = api_factory(default_audio_level="none")
    ids = [upload(api, clip, user_id="bob" if i % 2 else "ann").json()["task_id"] for i in range(5)]
    everything = api.get("/tasks").json()
    assert everything["total"] == 5 and [t["task_id"] for t in everything["tasks"]] == ids[::-1]
    bobs = api.get("/tasks", params={"user_id": "bob"}).json()
    assert bobs["total"] == 2 and {t["user_id"] for t in bobs["tasks"]} == {"bob"}
    page = api.get("/tasks", params={"limit": 2, "offset": 1}).json()
    assert [t["task_id"] for t in page["tasks"]] == ids[::-1][1:3] and page["limit"] == 2
    for task_id in ids:
        wait_for(api, task_id)
    assert api.get("/tasks", params={"status": "completed"}).json()["total"] == 5
    assert api.get("/tasks", params={"status": "bogus"}).status_code == 422
    assert api.get("/tasks", params={"limit": 0}).status_code == 422


def test_stats_health_and_docs(api):
    stats = api.get("/stats").json()
    assert stats["queue"] == {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0,
                              "total": 0}
    assert stats["limits"]["max_concurrent_tasks"] == 1 and stats["limits"]["max_video_size_gb"] == 2
    assert ".webm" in stats["limits"]["supported_video_formats"]
    assert stats["defaults"] == {"epsilon": 0.12, "video_strength": 1.0, "every_n_frames": 10,
                                 "audio_level": "weak"}
    assert api.get("/health").json()["status"] == "ok"
    assert "swagger" in api.get("/docs").text.lower()
    schema = api.get("/openapi.json").json()
    body = schema["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["epsilon"]["maximum"] == 0.2 and "file" in body["required"]
    assert schema["paths"]["/upload"]["post"]["operationId"] == "upload_video"


def test_successful_polls_are_not_access_logged():
    def kept(method, path, status):
        record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:5000", method, path, "1.1", status), None)
        return QuietPolls().filter(record)

    for path in ("/status/3f2b9c1e", "/tasks?limit=20", "/stats", "/health"):
        assert not kept("GET", path, 200)
        assert kept("GET", path, 404) and kept("GET", path, 500)   # errors are still logged
    assert kept("POST", "/upload", 202) and kept("DELETE", "/tasks/3f2b9c1e", 200)
    assert kept("GET", "/download/3f2b9c1e", 200) and kept("GET", "/report/3f2b9c1e", 200)


@pytest.mark.parametrize("query, fragment", [
    ("limit=999", "limit must be less than or equal to 500 (got '999')"),
    ("limit=abc", "limit must be a valid integer"),
    ("status=done", "status must be 'pending', 'processing', 'completed', 'failed' or 'cancelled'"),
    ("offset=-1", "offset must be greater than or equal to 0"),
])
def test_query_errors_have_the_one_documented_shape(api, query, fragment):
    response = api.get(f"/tasks?{query}")
    assert response.status_code == 422
    assert set(response.json()) == {"detail"} and isinstance(response.json()["detail"], str)
    assert fragment in response.json()["detail"]


def test_swagger_try_it_out_sends_nothing_for_the_optional_fields(api):
    schema = api.get("/openapi.json").json()
    form = schema["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    for name in ("user_id", "notes", "webhook_url"):
        # Swagger UI fills a field from its example, else "string" (or https://example.com/ for a URI).
        assert form["properties"][name].get("example") == "" and "format" not in form["properties"][name]
