"""The distributed backend for the tests: the API on the Celery queue, with real Celery workers on a real Redis.

- :func:`celery_settings`: settings for one test's deployment: a key prefix and a queue of its own on the
  shared test Redis, short leases so that a dead worker's task comes back in seconds;
- :func:`in_process_worker`: a :class:`CeleryWorker` consuming in a thread of the test process (Celery's own
  test worker, ``celery.contrib.testing``), so that a test can give it a protector factory;
- :class:`WorkerProcess`: ``python -m media_cleaner worker`` as an operator starts it, a separate OS process
  that can be killed with SIGKILL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from media_cleaner.config import Settings
from support.live_server import ROOT

TESTS = Path(__file__).resolve().parents[1]


def celery_settings(redis_url: str, data_dir: Path, **overrides) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(data_dir=data_dir, **{
        "store": "redis", "backend": "celery", "redis_url": redis_url, "redis_prefix": f"d{tag}:",
        "queue_name": f"mc-{tag}", "worker_lease_s": 2.0, "max_concurrent_tasks": 1,
        "progress_write_interval_s": 0.2, "video_preset": "ultrafast", "warm_up": False, "task_reports": False,
        **overrides})


def environment(settings: Settings) -> dict[str, str]:
    """``settings`` as the MEDIA_CLEANER_* variables of a server or worker process."""
    names = ("store", "backend", "redis_url", "redis_prefix", "queue_name", "worker_lease_s", "data_dir",
             "progress_write_interval_s", "video_preset", "warm_up", "task_reports", "engine_factory")
    env = {f"MEDIA_CLEANER_{name.upper()}": str(getattr(settings, name)) for name in names}
    return {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}


@contextmanager
def in_process_worker(settings: Settings, protector_factory, name: str = "test-worker"):
    """A Celery worker in this process, running tasks in its thread with ``protector_factory``."""
    from celery.contrib.testing.worker import start_worker

    from media_cleaner.service.queue.celery_worker import CeleryWorker
    worker = CeleryWorker(settings, name=name, protector_factory=protector_factory)
    worker.start()
    try:
        with start_worker(worker.app, pool="threads", concurrency=settings.max_concurrent_tasks,
                          queues=[settings.queue_name], perform_ping_check=False, loglevel="WARNING",
                          shutdown_timeout=30):
            yield worker
    finally:
        worker.stop()


class WorkerProcess:
    """One ``python -m media_cleaner worker`` process; its console in ``<data_dir>/../worker-<name>.txt``."""

    def __init__(self, settings: Settings, name: str, concurrency: int = 1, **env: str):
        self.settings, self.name, self.concurrency = settings, name, concurrency
        self.env = {**environment(settings), **env}
        self.console = settings.data_dir.parent / f"worker-{name}.txt"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        with open(self.console, "a") as console:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "media_cleaner", "worker", "--concurrency", str(self.concurrency),
                 "--name", self.name], cwd=ROOT, env=self.env, stdout=console, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.console.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as the kernel or a lost machine would: no clean-up runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as systemd stops it: Celery's warm shutdown."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.terminate(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_until(predicate, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
