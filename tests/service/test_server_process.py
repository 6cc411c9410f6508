"""The real server process: kill -9 mid-task and restart, clean SIGTERM shutdown, one server per folder."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from conftest import stored_output
from support.live_server import Server
from support.media_factory import make_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """Long enough (a few seconds of work) to be caught mid-processing."""
    path = tmp_path_factory.mktemp("media") / "long.mp4"
    make_video(path, seconds=8, size="640x360", fps=30)
    return path


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(**kwargs) -> Server:
        srv = Server(tmp_path / "data", **kwargs).start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.stop()


def upload(srv: Server, path: Path) -> dict:
    # The original sound is kept (audio_level none): these tests are about the process, not the voice mask.
    with open(path, "rb") as fh:
        response = httpx.post(srv.url + "/upload", files={"file": (path.name, fh, "video/mp4")},
                              data={"audio_level": "none"}, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()


def test_kill_9_mid_processing_then_restart_completes(server, long_clip, tmp_path):
    srv = server()
    task = upload(srv, long_clip)
    srv.wait_status(task["task_id"], lambda t: t["status"] == "processing" and t["progress"] > 5)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()

    store = json.loads((tmp_path / "data" / "queue_db" / "tasks.json").read_text())   # valid JSON
    assert store["tasks"][0]["status"] == "processing"
    again = server(port=srv.port)
    done = again.wait_status(task["task_id"], lambda t: t["status"] in ("completed", "failed"))
    # The engines ran in a process of their own, so the server's crash is not charged as an attempt.
    assert done["status"] == "completed" and (done["attempts"], done["server_crashes"]) == (1, 1)
    output = stored_output(tmp_path / "data", done)
    assert output.stat().st_size > 0
    assert list((tmp_path / "data" / "videos_temp").iterdir()) == []
    json.loads((tmp_path / "data" / "queue_db" / "tasks.json").read_text())


def test_sigterm_puts_the_running_task_back_and_leaves_nothing_half_written(server, long_clip, tmp_path):
    srv = server()
    task = upload(srv, long_clip)
    srv.wait_status(task["task_id"], lambda t: t["status"] == "processing" and t["progress"] > 5)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal once it is done
    data = tmp_path / "data"
    record = json.loads((data / "queue_db" / "tasks.json").read_text())["tasks"][0]
    assert record["status"] == "pending" and record["attempts"] == 0     # a shutdown is not an attempt
    assert list((data / "videos_temp").iterdir()) == []
    assert list((data / "videos_output").iterdir()) == []
    assert "task " + task["task_id"] in (data / "server_logs" / "queue.log").read_text()


def test_a_second_server_on_the_same_folder_refuses_to_start(server, tmp_path):
    first = server()
    second = Server(tmp_path / "data").start(wait=False)
    assert second.proc.wait(timeout=60) == 2
    message = second.output()
    assert "already using the data folder" in message and str(first.proc.pid) in message
    assert first.get("/health")["status"] == "ok"
