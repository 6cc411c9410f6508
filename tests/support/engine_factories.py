"""A protector factory that engine processes import by name (``engine_factory="support.engine_factories:scripted"``).

Its behaviour is chosen per task by ``every_n_frames`` (the pass-through protectors ignore it otherwise), so
one server can run a crashing task and then a good one. Each call appends what the engine process looks like
to ``$MC_TEST_DIR/engines.jsonl``: its pid, process group and niceness.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from media_cleaner.protection.seams import PassThroughAudio, PassThroughVideo, Protectors

NORMAL, SLOW, CRASH, RAISE = 1, 2, 3, 4   # every_n_frames values


class _Slow(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        time.sleep(0.05)
        return frame


class _Crash(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        if index == 3:
            os.kill(os.getpid(), signal.SIGKILL)   # as the kernel's out-of-memory killer would
        return frame


class _Raise(PassThroughVideo):
    def protect_frame(self, frame, pts_s, index):
        if index == 2:
            raise ValueError("the surrogate returned NaN")
        return frame


def scripted(params, threads: int = 1) -> Protectors:
    with open(Path(os.environ["MC_TEST_DIR"]) / "engines.jsonl", "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "pgid": os.getpgrp(), "nice": os.nice(0),
                             "threads": threads}) + "\n")
    video = {SLOW: _Slow, CRASH: _Crash, RAISE: _Raise}.get(params.every_n_frames, PassThroughVideo)()
    return Protectors(video, None if params.audio_level == "none" else PassThroughAudio())


def engines(folder: Path) -> list[dict]:
    """What ``scripted`` recorded, one entry per task."""
    path = folder / "engines.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
