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


@contextmanager
def redis_server(folder: Path):
    """A running redis-server; yields its URL, stops it afterwards."""
    executable = require_redis()
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                "--daemonize", "no", "--logfile", str(folder / "redis.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()[-2000:]}")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
