"""The ffmpeg children of one pipeline run: started, fed and read through pipes, watched by a watchdog that kills
one that stalls, and the progress they report."""
from __future__ import annotations

import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable

from media_cleaner.media.cancel import CancelToken
from media_cleaner.media.ffmpeg import ERROR_WORDS, error_reason, kill_process
from media_cleaner.media.probe import MediaError


class Watchdog:
    """Kills an ffmpeg child that keeps the pipeline waiting longer than ``stall_s``: reading a frame from
    the decoder, writing one to the encoder, waiting for a frame's timestamp or for the child to exit. The
    kill unblocks the wait; :meth:`check` then fails the run with a message that names ffmpeg (after the
    run's cancel, which kills the children too). Time spent in the protectors is not watched here (ffmpeg just
    waits on a full pipe then)."""

    def __init__(self, stall_s: float, cancel: CancelToken):
        self.stall_s, self._cancel = stall_s, cancel
        self.stalled: str | None = None
        self._lock = threading.Lock()
        self._waits: dict[object, tuple["FFmpegProcess", str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ffmpeg-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def waiting(self, process: "FFmpegProcess", doing: str):
        """Watch ``process`` while the caller blocks on it; ``doing`` completes "ffmpeg stopped …"."""
        key = object()
        with self._lock:
            self._waits[key] = (process, doing, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                del self._waits[key]

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.stall_s / 4)):
            now = time.monotonic()
            with self._lock:
                overdue = [(process, doing) for process, doing, since in self._waits.values()
                           if now - since > self.stall_s]
            for process, doing in overdue:
                if self.stalled is None:
                    self.stalled = doing
                kill_process(process.process)

    def check(self) -> None:
        """Raise TaskCancelled after a cancel, MediaError after a stall; nothing otherwise."""
        self._cancel.raise_if_cancelled()
        if self.stalled is not None:
            raise MediaError(f"ffmpeg stopped {self.stalled} for more than {self.stall_s:.0f} s and was "
                             f"stopped. Please try again; if it happens again, the server's ffmpeg is faulty "
                             f"(its operator can choose another, see ffmpeg/README.md).")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Progress:
    """Forwards a monotone fraction in [0, 1] to the caller's callback."""

    def __init__(self, callback: Callable[[float], None] | None):
        self._callback = callback
        self._last = 0.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(self._last, fraction))
        self._last = fraction
        if self._callback is not None:
            self._callback(fraction)


class FFmpegProcess:
    """One ffmpeg child with pipes, registered for cancel, its log drained by a thread.

    ``on_log_line`` may claim a log line (return True) instead of it being kept for error messages;
    ``on_log_end`` is called when the log closes (the process ended).
    """

    def __init__(self, args: list[str], cancel: CancelToken, *, pipe_stdin: bool = False,
                 pipe_stdout: bool = False, on_log_line: Callable[[str], bool] | None = None,
                 on_log_end: Callable[[], None] | None = None):
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._cancel = cancel
        cancel.register(self.process)
        self._log: deque[str] = deque(maxlen=200)
        self._on_log_line = on_log_line
        self._on_log_end = on_log_end
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self) -> None:
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if self._on_log_line is None or not self._on_log_line(line):
                self._log.append(line)
        if self._on_log_end is not None:
            self._on_log_end()

    @property
    def stdin(self):
        return self.process.stdin

    @property
    def stdout(self):
        return self.process.stdout

    def reason(self) -> str:
        return error_reason("\n".join(self._log))

    def complained(self) -> bool:
        """Whether its log has an error line (a decoder says so when it meets damaged data)."""
        return any(ERROR_WORDS.search(line) for line in self._log)

    def finish(self) -> int:
        """Close its input, wait for it to exit and for its log; the exit status."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self.process.wait()
        self._drain.join()
        return self.process.returncode

    def close(self) -> None:
        """Kill it if still running and release everything (safe to call twice)."""
        kill_process(self.process)
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        self._drain.join()
        self.process.stderr.close()
        self._cancel.unregister(self.process)


def read_exactly(stream, view: memoryview) -> int:
    """Fill ``view`` from ``stream``; the number of bytes read (less only at the end of the stream)."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled
