"""A real server process for the tests: ``run_server.py`` on a free port with a data folder of the test's own.

Used by every test that needs the server as a user starts it (kill -9 and restart, the schema fuzzing, the
security checks over HTTP, the web page in a browser)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, port: int | None = None, **settings: str):
        """``settings``: extra MEDIA_CLEANER_* variables, by setting name (e.g. warm_up="false")."""
        self.data_dir, self.port = data_dir, port or free_port()
        self.settings = {f"MEDIA_CLEANER_{key.upper()}": value for key, value in settings.items()}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 60) -> "Server":
        env = {**os.environ, "MEDIA_CLEANER_PROGRESS_WRITE_INTERVAL_S": "0.2", **self.settings}
        # The console output goes to a file: a pipe nobody reads fills up and then blocks the server's logging.
        self.console = self.data_dir.parent / f"console-{self.port}-{time.monotonic_ns()}.txt"
        with open(self.console, "w") as console:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run_server.py"), "--port", str(self.port), "--workers", "1",
                 "--data-dir", str(self.data_dir)], cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT)
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                        return self
                except httpx.TransportError:
                    time.sleep(0.2)
            raise AssertionError("server did not start")
        return self

    def output(self) -> str:
        return self.console.read_text(errors="replace")

    def get(self, path: str) -> dict:
        return httpx.get(self.url + path, timeout=30).json()

    def wait_status(self, task_id: str, predicate, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.get(f"/status/{task_id}")
            if predicate(task):
                return task
            time.sleep(0.1)
        raise AssertionError(f"timeout; task is {task}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
