"""Stopping a run from another thread: :class:`CancelToken` kills the ffmpeg children registered with it,
which unblocks any pipe read or write, and the run raises :class:`TaskCancelled` and cleans up."""
from __future__ import annotations

import subprocess
import threading

from media_cleaner.media.ffmpeg import kill_process


class TaskCancelled(Exception):
    """The run was cancelled through its :class:`CancelToken`."""


class CancelToken:
    """Thread-safe cancel flag that also kills the child processes registered with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._processes: set[subprocess.Popen] = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            processes = list(self._processes)
        for process in processes:
            kill_process(process)

    def register(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.add(process)
            cancelled = self._cancelled
        if cancelled:
            kill_process(process)

    def unregister(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def raise_if_cancelled(self) -> None:
        if self._cancelled:
            raise TaskCancelled("The task was cancelled")
