"""Media Cleaner client: a library and a command line for the Media Cleaner HTTP API.

The service adds an adversarial perturbation to videos so that face detectors and voice-cloning
models get less out of them. This module talks to a running server (start one with
``python run_server.py``); it needs only ``httpx``.

Library::

    from media_cleaner_client import MediaCleanerClient, TaskFailed

    with MediaCleanerClient("http://127.0.0.1:8000", api_key=None) as mc:
        # one call: upload, wait for processing, download
        out = mc.protect("in.mp4", "out.mp4", epsilon=0.12, audio_level="weak")

        # or step by step
        task = mc.upload("in.mp4", epsilon=0.08, every_n_frames=5,
                         progress=lambda sent, total: print(sent, "/", total))
        try:
            done = mc.wait(task["task_id"], timeout=3600,
                           on_progress=lambda t: print(t["status"], t["progress"]))
        except TaskFailed as exc:
            print("failed:", exc.error_message)
        else:
            mc.download(done["task_id"], "out.mp4")

        mc.list_tasks(status="completed", limit=20)
        mc.cancel(task["task_id"])
        mc.stats(); mc.health()

Command line (progress bars go to stderr, results to stdout)::

    .venv/bin/python client.py protect in.mp4 -o out.mp4 --epsilon 0.12 --audio-level medium
    .venv/bin/python client.py protect in.mp4 --server http://gpu-box:8000 --api-key SECRET
    .venv/bin/python client.py upload in.mp4 --every-n-frames 5      # prints the task JSON
    .venv/bin/python client.py status TASK_ID
    .venv/bin/python client.py wait TASK_ID                            # resume after Ctrl-C
    .venv/bin/python client.py download TASK_ID -o out.mp4
    .venv/bin/python client.py list --status completed --limit 10
    .venv/bin/python client.py cancel TASK_ID
    .venv/bin/python client.py stats
    .venv/bin/python client.py health

The server URL and API key default to the environment variables ``MEDIA_CLEANER_URL`` and
``MEDIA_CLEANER_API_KEY`` (then ``http://127.0.0.1:8000`` and no key).

Errors are typed: every failure is a :class:`MediaCleanerError` (``.status_code``, ``.detail``,
``.response``), with one subclass per HTTP status the server uses (``NotFound``, ``ValidationError``,
``RateLimited`` ...), :class:`ConnectionFailed` when the server cannot be reached, and
:class:`TaskFailed` / :class:`TaskCancelled` / :class:`WaitTimeout` from :meth:`MediaCleanerClient.wait`.
On the command line they print ``error: <detail>`` and exit with 2 (usage errors, 4xx) or 1 (others).
"""
from __future__ import annotations

from media_cleaner_client.api import MediaCleanerClient
from media_cleaner_client.cli import main, verdict
from media_cleaner_client.constants import __version__
from media_cleaner_client.errors import (
    AuthenticationError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    FileTooLarge,
    Gone,
    MediaCleanerError,
    NotFound,
    RateLimited,
    ServerError,
    TaskCancelled,
    TaskFailed,
    UnsupportedMedia,
    ValidationError,
    WaitTimeout,
)

__all__ = [
    "MediaCleanerClient",
    "MediaCleanerError", "BadRequest", "AuthenticationError", "NotFound", "Conflict", "Gone",
    "FileTooLarge", "UnsupportedMedia", "ValidationError", "RateLimited", "ServerError",
    "ConnectionFailed", "TaskFailed", "TaskCancelled", "WaitTimeout",
    "main", "verdict", "__version__",
]
