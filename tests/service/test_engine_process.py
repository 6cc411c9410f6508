"""Engine processes: tasks run in a child process per worker, which a cancel kills (with its ffmpeg), whose
crash fails only its task, and which never outlives the server."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import make_service, stored_output, wait_for
from support.engine_factories import CRASH, NORMAL, RAISE, SLOW, engines
from fastapi.testclient import TestClient
from support.media_factory import make_video
from support.live_server import Server

from media_cleaner.api import create_app
from media_cleaner.service.queue.engine_process import ENGINE_NICENESS


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {"short": make_video(folder / "short.mp4", seconds=1, size="64x64", fps=10),
            "long": make_video(folder / "long.mp4", seconds=4, size="64x64", fps=25)}   # 100 frames × 50 ms


@pytest.fixture
def records(tmp_path, monkeypatch) -> Path:
    """Where support.engine_factories.scripted writes; engine processes inherit the variable when spawned."""
    folder = tmp_path / "records"
    folder.mkdir()
    monkeypatch.setenv("MC_TEST_DIR", str(folder))
    return folder


@pytest.fixture
def api(api_factory, records):
    """The service with its real engine processes, running the scripted factory."""
    return api_factory(protector_factory=None, engine_factory="support.engine_factories:scripted")


def upload(client, path: Path, every_n_frames: int = NORMAL, **fields):
    with open(path, "rb") as fh:
        response = client.post("/upload", files={"file": (path.name, fh, "video/mp4")},
                               data={"every_n_frames": str(every_n_frames), **fields})
    assert response.status_code == 202, response.text
    return response.json()


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (zombies do not count)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_task_runs_in_a_low_priority_engine_process_of_its_own(records, clips, tmp_path):
    with TestClient(create_app(service=make_service(tmp_path, None, engine_factory="support.engine_factories:scripted"))) \
            as client:
        done = wait_for(client, upload(client, clips["short"], audio_level="weak")["task_id"])
        assert done["status"] == "completed", done
        assert client.get(done["download_url"]).content == stored_output(tmp_path, done).read_bytes()
        [engine] = engines(records)
        assert engine["pid"] != os.getpid() and engine["pgid"] == engine["pid"]   # its own process group
        assert engine["nice"] == min(19, os.nice(0) + ENGINE_NICENESS)
        assert alive(engine["pid"])   # kept for the next task
    assert not alive(engine["pid"])   # the service's stop ended it
    assert "engine process %d started" % engine["pid"] in (tmp_path / "server_logs" / "server.log").read_text()


def test_cancel_kills_the_engine_process_and_its_ffmpeg_then_a_new_one_takes_the_next_task(api, records, clips,
                                                                                              tmp_path):
    task = upload(api, clips["long"], SLOW)
    running = wait_for(api, task["task_id"], statuses=("processing",))
    deadline = time.monotonic() + 30
    while running["progress"] < 5 and time.monotonic() < deadline:   # progress comes from the child
        time.sleep(0.05)
        running = api.get(f"/status/{task['task_id']}").json()
    assert running["progress"] >= 5 and running["eta_s"] is not None
    pid = engines(records)[0]["pid"]
    assert len(group_members(pid)) >= 3   # the engine process, the ffmpeg decoder and encoder

    assert api.delete(f"/tasks/{task['task_id']}").json()["status"] == "cancelled"
    assert eventually(lambda: not group_members(pid), timeout=5), group_members(pid)
    assert eventually(lambda: not list((tmp_path / "videos_temp").iterdir()))
    assert list((tmp_path / "videos_output").iterdir()) == []   # no partial output either
    assert wait_for(api, task["task_id"])["status"] == "cancelled"

    done = wait_for(api, upload(api, clips["short"])["task_id"])
    assert done["status"] == "completed", done
    assert engines(records)[1]["pid"] != pid


def test_a_stopped_engine_process_is_killed_by_the_watchdog_and_the_queue_goes_on(api_factory, records, clips,
                                                                                    tmp_path):
    """SIGSTOP on the busy engine (a hang, as far as the server can tell): without the watchdog the task stayed
    processing forever and two such tasks blocked the whole queue."""
    api = api_factory(protector_factory=None, engine_factory="support.engine_factories:scripted", task_stall_timeout_s=2)
    task = upload(api, clips["long"], SLOW)
    running = wait_for(api, task["task_id"], statuses=("processing",))
    deadline = time.monotonic() + 30
    while running["progress"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
        running = api.get(f"/status/{task['task_id']}").json()
    pid = engines(records)[0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    failed = wait_for(api, task["task_id"], timeout=30)
    assert failed["status"] == "failed" and "made no progress for 2 s" in failed["error_message"]
    assert time.monotonic() - stopped < 15
    assert eventually(lambda: not group_members(pid), timeout=5)   # killed with its ffmpeg children
    assert list((tmp_path / "videos_output").iterdir()) == []

    done = wait_for(api, upload(api, clips["short"])["task_id"])
    assert done["status"] == "completed", done
    assert engines(records)[1]["pid"] != pid


def test_a_crashing_engine_process_fails_only_its_task(api, records, clips, tmp_path):
    crashed = wait_for(api, upload(api, clips["short"], CRASH)["task_id"])
    assert crashed["status"] == "failed"
    assert crashed["error_message"] == ("The processing engine crashed (killed by SIGKILL, perhaps out of memory); "
                                        "the task can be uploaded again.")
    pid = engines(records)[0]["pid"]
    assert eventually(lambda: not group_members(pid), timeout=5)   # its ffmpeg children too
    assert list((tmp_path / "videos_output").iterdir()) == []

    done = wait_for(api, upload(api, clips["short"])["task_id"])
    assert done["status"] == "completed", done
    assert engines(records)[1]["pid"] != pid
    assert "processing engine crashed" in (tmp_path / "server_logs" / "queue.log").read_text()


def test_an_error_in_the_engine_process_is_reported_and_its_traceback_logged(api, records, clips, tmp_path):
    failed = wait_for(api, upload(api, clips["short"], RAISE)["task_id"])
    assert failed["status"] == "failed"
    assert failed["error_message"].startswith("Processing failed unexpectedly (ValueError: the surrogate "
                                              "returned NaN).")
    log = (tmp_path / "server_logs" / "server.log").read_text()
    assert f"task {failed['task_id']} failed in its engine process" in log
    assert 'engine_factories.py", line' in log and "in protect_frame" in log   # the child's own traceback
    pid = engines(records)[0]["pid"]
    done = wait_for(api, upload(api, clips["short"])["task_id"])   # the same engine process goes on
    assert done["status"] == "completed" and engines(records)[1]["pid"] == pid


def test_the_real_engines_and_report_in_an_engine_process(api_factory, clips, tmp_path):
    api = api_factory(protector_factory=None, task_reports=True)
    done = wait_for(api, upload(api, clips["short"], 5, audio_level="none")["task_id"], timeout=300)
    assert done["status"] == "completed", done
    report = done["report"]
    assert report["preview"] == f"videos_output/{done['task_id']}_preview.png" and report["psnr"] > 20
    assert api.get(f"/report/{done['task_id']}/preview.png").status_code == 200


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found += [int(c) for c in fh.read().split()]
    return found


def test_engine_processes_end_when_the_server_is_killed(tmp_path):
    server = Server(tmp_path / "data", warm_up="false").start()
    try:
        assert eventually(lambda: any(group_members(c) == [c] for c in children(server.proc.pid)))
        spawned = children(server.proc.pid)   # the engine process (and multiprocessing's resource tracker)
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        assert eventually(lambda: not any(alive(pid) for pid in spawned), timeout=5), \
            [pid for pid in spawned if alive(pid)]
    finally:
        server.stop()
