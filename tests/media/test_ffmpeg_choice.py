"""Which ffmpeg the service uses, the start-up check that refuses an unusable one, and the watchdog that
stops an ffmpeg child which stalls in the middle of a task.

The broken binaries are small shell scripts: one that never answers, one that claims an old version, one
that lacks an encoder, and wrappers around the real ffmpeg that stall once the pipeline depends on them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import pytest

from support import media_factory as mf
from conftest import wait_for
from media_cleaner.media import ffmpeg as ffmpeg_bin
from media_cleaner.media.ffmpeg import FFmpegUnusable, inspect_ffmpeg, locate_ffmpeg
from media_cleaner.media.pipeline import protect_video
from media_cleaner.media.probe import MediaError
from media_cleaner.protection.seams import PassThroughVideo, Protectors

ROOT = Path(__file__).resolve().parents[2]
REAL = imageio_ffmpeg.get_ffmpeg_exe()


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def stalling_wrapper(path: Path, pattern: str, action: str) -> str:
    """The real ffmpeg, except for command lines matching the shell ``pattern``, which run ``action``."""
    return script(path, f'case "$*" in\n  {pattern}) {action} ;;\n  *) exec "{REAL}" "$@" ;;\nesac\n')


@pytest.fixture
def fresh_lookup(monkeypatch):
    inspect_ffmpeg.cache_clear()
    ffmpeg_bin.find_ffmpeg.cache_clear()
    yield monkeypatch
    inspect_ffmpeg.cache_clear()
    ffmpeg_bin.find_ffmpeg.cache_clear()


def test_the_wheels_binary_is_the_default_even_with_one_on_the_path(fresh_lookup, tmp_path):
    fresh_lookup.delenv(ffmpeg_bin.ENV_VARIABLE, raising=False)
    fresh_lookup.setattr(ffmpeg_bin, "LOCAL_FFMPEG_DIR", tmp_path)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    script(on_path / "ffmpeg", 'echo "ffmpeg version 5.1.9"\n')
    fresh_lookup.setenv("PATH", f"{on_path}{os.pathsep}{os.environ['PATH']}")
    assert locate_ffmpeg() == (REAL, "the imageio-ffmpeg package")
    # Asked for by name, the PATH's one is used.
    fresh_lookup.setenv(ffmpeg_bin.ENV_VARIABLE, "ffmpeg")
    assert locate_ffmpeg() == (str(on_path / "ffmpeg"), ffmpeg_bin.ENV_VARIABLE)


def test_the_binary_in_use_is_checked_and_described(fresh_lookup):
    info = inspect_ffmpeg(REAL)
    assert info.release is not None and info.release >= ffmpeg_bin.MINIMUM_VERSION
    assert info.public() == {"version": info.version, "source": "the ffmpeg setting", "libvmaf": True}


def test_an_ffmpeg_that_never_answers_is_refused(fresh_lookup, tmp_path):
    fresh_lookup.setattr(ffmpeg_bin, "INSPECT_TIMEOUT_S", 1.0)
    hung = script(tmp_path / "ffmpeg", "exec sleep 1000\n")
    started = time.monotonic()
    with pytest.raises(FFmpegUnusable, match="did not answer") as refused:
        inspect_ffmpeg(hung)
    assert time.monotonic() - started < 10
    assert hung in str(refused.value) and ffmpeg_bin.ENV_VARIABLE in str(refused.value)


def test_an_old_ffmpeg_is_refused_with_its_version(fresh_lookup, tmp_path):
    old = script(tmp_path / "ffmpeg", 'echo "ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright (c) 2000-2021"\n')
    with pytest.raises(FFmpegUnusable, match=r"version 4\.4\.2-0ubuntu0\.22\.04\.1; Media Cleaner needs 5\.1"):
        inspect_ffmpeg(old)


def test_an_ffmpeg_without_libx264_is_refused_naming_what_is_missing(fresh_lookup, tmp_path):
    lacking = stalling_wrapper(tmp_path / "ffmpeg", "*-encoders*", f'"{REAL}" "$@" | grep -v libx264')
    with pytest.raises(FFmpegUnusable, match="lacks what Media Cleaner needs: encoder libx264"):
        inspect_ffmpeg(lacking)


def test_the_server_refuses_to_start_with_a_hung_ffmpeg(tmp_path):
    hung = script(tmp_path / "ffmpeg", "exec sleep 1000\n")
    env = {**os.environ, ffmpeg_bin.ENV_VARIABLE: hung}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "run_server.py"), "--port", "18931", "--data-dir",
                             str(tmp_path / "data")], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert f"The ffmpeg at {hung} did not answer" in result.stderr
    assert time.monotonic() - started < ffmpeg_bin.INSPECT_TIMEOUT_S + 60


# --- the watchdog ----------------------------------------------------------------------------------------

# The decoder's command line pipes raw frames out; the encoder's reads them in and writes libx264.
DECODER = "*rawvideo*showinfo*pipe:*"
ENCODER = "*pipe:*libx264*"


@pytest.mark.parametrize("pattern, action, doing", [
    # A decoder that sends a few frames, then keeps its pipes open and says nothing.
    (DECODER, f'"{REAL}" "$@" | head -c 700000; exec sleep 1001', "sending decoded frames"),
    # An encoder that never reads its input.
    (ENCODER, "exec sleep 1002", "taking frames to encode"),
], ids=["decoder", "encoder"])
def test_a_stalled_ffmpeg_fails_the_run_within_the_watchdog_time(tmp_path, pattern, action, doing):
    source = mf.make_video(tmp_path / "clip.mp4", seconds=2, audio=False)
    wrapper = stalling_wrapper(tmp_path / "ffmpeg", pattern, action)
    started = time.monotonic()
    with pytest.raises(MediaError, match=f"ffmpeg stopped {doing} for more than 2 s") as failed:
        protect_video(source, tmp_path / "out.mp4", Protectors(PassThroughVideo(), None), temp_dir=tmp_path / "scratch",
                      ffmpeg=wrapper, stall_timeout_s=2)
    assert time.monotonic() - started < 20
    assert str(tmp_path) not in str(failed.value)   # no server path in a message users see
    assert not (tmp_path / "out.mp4").exists() and not any((tmp_path / "scratch").iterdir())
    # The stalled child was killed with its process group: nothing of it is left running.
    sleeper = action.rsplit("exec ", 1)[1]
    assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).returncode == 1


def test_a_task_with_a_stalling_ffmpeg_fails_and_the_worker_goes_on(api_factory, tmp_path):
    wrapper = stalling_wrapper(tmp_path / "ffmpeg", ENCODER, "exec sleep 1000")
    api = api_factory(ffmpeg=wrapper, ffmpeg_stall_timeout_s=2)
    with open(mf.make_video(tmp_path / "clip.mp4", seconds=1, audio=False), "rb") as f:
        task_id = api.post("/upload", files={"file": ("clip.mp4", f, "video/mp4")}).json()["task_id"]
    task = wait_for(api, task_id, timeout=60)
    assert task["status"] == "failed"
    assert "ffmpeg stopped taking frames to encode for more than 2 s" in task["error_message"]
    assert api.get("/health").json()["status"] == "ok"


class _Pause(PassThroughVideo):
    """Keeps the first frame for a while, as a slow engine would."""

    def protect_frame(self, frame, pts_s, index):
        if index == 0:
            time.sleep(4)
        return frame


def test_health_reports_a_worker_without_progress(api_factory, tmp_path):
    api = api_factory(lambda params, threads: Protectors(_Pause(), None), ffmpeg_stall_timeout_s=1)
    health = api.get("/health").json()
    assert (health["status"], health["stalled"]) == ("ok", 0)
    assert health["ffmpeg"]["version"] == inspect_ffmpeg().version
    with open(mf.make_video(tmp_path / "clip.mp4", seconds=1, audio=False), "rb") as f:
        task_id = api.post("/upload", files={"file": ("clip.mp4", f, "video/mp4")},
                           data={"audio_level": "none"}).json()["task_id"]
    deadline = time.monotonic() + 4
    seen = []
    while time.monotonic() < deadline:
        seen.append(api.get("/health").json())
        if seen[-1]["stalled"]:
            break
        time.sleep(0.1)
    assert seen[-1]["stalled"] == 1 and seen[-1]["status"] == "degraded"
    assert wait_for(api, task_id)["status"] == "completed"
    assert api.get("/health").json()["status"] == "ok"
