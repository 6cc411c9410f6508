"""client.py against a real server: ``run_server.py`` started as a subprocess on a free port.

The module starts one server (1 worker, a temporary data folder) for all its tests, makes a 1-second
test video with the ffmpeg of imageio-ffmpeg, and drives it through ``python client.py protect`` and the
library. It is skipped only when run_server.py is absent; a server that cannot start is a failure
(its log is shown).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

if not (REPO / "run_server.py").is_file():
    pytest.skip("run_server.py is not there yet", allow_module_level=True)

import client as mc  # noqa: E402
from support.live_server import free_port  # noqa: E402
from media_cleaner.media.ffmpeg import ENV_VARIABLE  # noqa: E402

SERVER_START_TIMEOUT = 180.0   # importing torch and loading the detectors can take a while on a cold CPU box
PROTECT_TIMEOUT = 900.0        # one 1-second clip, CPU in the worst case


def _ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def _clean_env() -> dict:
    """The environment without the developer's own settings (API key, folders...), but with the ffmpeg choice:
    the server and the client must use the binary the test run says it uses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_CLEANER_") or k == ENV_VARIABLE}


def _log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """Start run_server.py, wait for /health, yield its base URL, terminate it afterwards."""
    data_dir = tmp_path_factory.mktemp("server_data")
    log_path = data_dir.parent / "server_stdout.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the server must not pick up the developer's own settings (API key, folders...)
    env = _clean_env()
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"run_server.py exited with {proc.returncode} before answering /health:\n"
                            f"{_log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"run_server.py did not answer /health within {SERVER_START_TIMEOUT:g}s:\n"
                            f"{_log_tail(log_path)}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _test_clip(out: Path, seconds: float, size: str, rate: int) -> Path:
    cmd = [_ffmpeg(), "-y", "-hide_banner", "-loglevel", "error",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-f", "lavfi", "-i", "sine",
           "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    return _test_clip(tmp_path_factory.mktemp("media") / "sample.mp4", 1, "160x120", 10)


@pytest.fixture
def api(live_server):
    with mc.MediaCleanerClient(live_server) as c:
        yield c


def _streams(path: Path) -> str:
    """Decode the whole file with ffmpeg (fails on a broken file) and return its stream listing."""
    proc = subprocess.run([_ffmpeg(), "-hide_banner", "-i", str(path), "-map", "0", "-f", "null", "-"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_health_and_stats(api):
    health = api.health()
    assert health["status"] == "ok" and "version" in health
    stats = api.stats()
    assert {"queue", "workers", "limits", "defaults"} <= set(stats)
    assert stats["queue"]["total"] >= 0


def test_protect_command_line(live_server, small_video, tmp_path):
    out = tmp_path / "protected.mp4"
    env = _clean_env()
    proc = subprocess.run(
        [sys.executable, str(REPO / "client.py"), "protect", str(small_video), "-o", str(out),
         "--epsilon", "0.12", "--every-n-frames", "10", "--audio-level", "weak", "--user-id", "live-test",
         "--server", live_server],
        capture_output=True, text=True, timeout=PROTECT_TIMEOUT, cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert str(out.resolve()) in proc.stdout
    assert "report (white-box surrogates, an upper bound): " in proc.stdout and "PSNR" in proc.stdout
    assert "upload" in proc.stderr and "processing" in proc.stderr and "download" in proc.stderr
    assert out.is_file() and out.stat().st_size > 0
    listing = _streams(out)
    assert "Video:" in listing and "Audio:" in listing
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

    with mc.MediaCleanerClient(live_server) as api:
        page = api.list_tasks(user_id="live-test", status="completed")
        assert page["total"] >= 1 and all(t["user_id"] == "live-test" for t in page["tasks"])


def test_library_protect_and_download(api, small_video, tmp_path):
    sent, seen = [], []
    task = api.upload(small_video, epsilon=0.08, audio_level="none", notes="library",
                      progress=lambda s, t: sent.append((s, t)))
    assert task["status"] in ("pending", "processing") and task["epsilon"] == pytest.approx(0.08)
    size = small_video.stat().st_size
    assert sent[-1] == (size, size)
    done = api.wait(task["task_id"], timeout=PROTECT_TIMEOUT, on_progress=seen.append)
    assert done["status"] == "completed" and done["progress"] == pytest.approx(100.0)
    assert seen and seen[-1]["status"] == "completed"
    out = api.download(task["task_id"], tmp_path)   # a folder: the server's file name is used
    assert out.name == "sample_protected.mp4" and out.stat().st_size > 0
    assert "Video:" in _streams(out)
    # a finished task is deleted with its files
    assert api.cancel(task["task_id"]) == {"task_id": task["task_id"], "deleted": True}
    with pytest.raises(mc.NotFound):
        api.status(task["task_id"])


def test_text_file_named_mp4_is_unsupported(api, tmp_path):
    fake = tmp_path / "x.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(mc.UnsupportedMedia) as exc:
        api.upload(fake)
    assert exc.value.status_code == 415 and str(exc.value)


def test_out_of_range_epsilon_is_a_validation_error(api, small_video):
    with pytest.raises(mc.ValidationError) as exc:
        api.upload(small_video, epsilon=0.5)
    assert exc.value.status_code == 422 and "epsilon" in str(exc.value)


def test_unknown_task(api, tmp_path):
    with pytest.raises(mc.NotFound):
        api.status("0" * 32)
    with pytest.raises(mc.NotFound):
        api.download("0" * 32, tmp_path / "o.mp4")
    with pytest.raises(mc.NotFound):
        api.cancel("0" * 32)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """Long enough (minutes of work for the real engines) that a cancel always arrives first."""
    return _test_clip(tmp_path_factory.mktemp("media") / "long.mp4", 20, "320x240", 25)


def test_cancel(api, long_video, tmp_path):
    task = api.upload(long_video, user_id="cancel-test")
    result = api.cancel(task["task_id"])
    assert result["status"] == "cancelled" and result["task_id"] == task["task_id"]
    assert api.status(task["task_id"])["status"] == "cancelled"
    with pytest.raises(mc.TaskCancelled):
        api.wait(task["task_id"], timeout=30)
    with pytest.raises(mc.Conflict):
        api.download(task["task_id"], tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_cli_errors_against_live_server(live_server, tmp_path, capsys):
    assert mc.main(["status", "0" * 32, "--server", live_server]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    port = free_port()
    assert mc.main(["health", "--server", f"http://127.0.0.1:{port}"]) == 1
    assert "python run_server.py" in capsys.readouterr().err
