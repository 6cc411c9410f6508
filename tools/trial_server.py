"""Shared pieces of the trial scripts: a real server process on a free port, test media, memory sampling."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

from media_cleaner.media.ffmpeg import find_ffmpeg  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(path: Path, seconds: float, size: str = "320x240", fps: int = 25, crf: int = 23) -> Path:
    """A testsrc2 + sine clip; a low ``crf`` makes a big file from a short clip (upload load)."""
    if not path.exists():
        subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}",
                        "-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}", "-c:v", "libx264",
                        "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-c:a", "aac",
                        "-shortest", str(path)], check=True)
    return path


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (its own threads, not its children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime


def descendants(pid: int) -> list[int]:
    """Children, grandchildren… of ``pid`` (engine processes, ffmpeg), from /proc."""
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                children += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return children + [d for c in children for d in descendants(c)]


class ServerProcess:
    """``run_server.py`` in a child process, killed or stopped on demand."""

    def __init__(self, data_dir: Path, workers: int = 1, env: dict | None = None, port: int | None = None,
                 log_level: str = "WARNING"):
        self.data_dir, self.workers, self.log_level = data_dir, workers, log_level
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kib = 0            # the server (API) process alone
        self.peak_children_rss_kib = 0   # its engine processes and ffmpeg children together
        self._sampling = threading.Event()

    def start(self, timeout: float = 60) -> "ServerProcess":
        # Console output to a file (the server log has it all too): an unread pipe would fill up and block it.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        console = self.data_dir.parent / f"console-{self.port}.txt"
        with open(console, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run_server.py"), "--port", str(self.port), "--workers",
                 str(self.workers), "--data-dir", str(self.data_dir), "--log-level", self.log_level],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {console.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    threading.Thread(target=self._sample, daemon=True).start()
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def _sample(self) -> None:
        proc = self.proc
        while proc.poll() is None:
            self.peak_rss_kib = max(self.peak_rss_kib, rss_kib(proc.pid))
            children = sum(rss_kib(pid) for pid in descendants(proc.pid))
            self.peak_children_rss_kib = max(self.peak_children_rss_kib, children)
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
