"""A real Redis for the tests: Debian's ``redis-server`` on a free port, its data in a temporary folder, with
the durability the store asks for (append-only file, fsync on every write). ``.ci/run`` installs the package
when it is missing; without it the tests that need it are skipped on a developer's machine and fail in CI."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.live_server import free_port

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> str:
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI needs Debian's redis-server for the Redis store tests (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return REDIS_SERVER


class RedisServer:
    """A redis-server on a port of its own, its data (the append-only file) in ``folder``; restartable on the
    same port and data, as an operator restarts Redis."""

    def __init__(self, folder: Path):
        self.executable = require_redis()
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--logfile", str(self.folder / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return self
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def redis_server(folder: Path):
    """A running redis-server; yields its URL, stops it afterwards."""
    server = RedisServer(folder).start()
    try:
        yield server.url
    finally:
        server.stop()
