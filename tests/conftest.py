"""Shared fixtures: a running in-process service on a temporary data folder, and small test media."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from media_cleaner.api import create_app
from media_cleaner.config import Settings
from media_cleaner.params import ProtectionParams
from media_cleaner.protection.seams import PassThroughAudio, PassThroughVideo, Protectors
from media_cleaner.service.core import MediaCleanerService
from media_cleaner.service.files import output_name
from media_cleaner.service.queue.threads import WorkerPool


def pass_through(params: ProtectionParams, threads: int) -> Protectors:
    """The service tests exercise the queue, the API and the pipeline, not the engines (their own tests do)."""
    return Protectors(PassThroughVideo(), None if params.audio_level == "none" else PassThroughAudio())


def make_service(data_dir: Path, protector_factory=pass_through, store_factory=None, **overrides) -> MediaCleanerService:
    """``store_factory(settings)``: another TaskStore than the JSON file (the default)."""
    settings = Settings(data_dir=data_dir, **{"max_concurrent_tasks": 1, "progress_write_interval_s": 0.2,
                                              "video_preset": "ultrafast", "warm_up": False, "task_reports": False,
                                              **overrides})
    return MediaCleanerService(settings, pool_factory=lambda s, store: WorkerPool(s, store, protector_factory),
                               **({"store_factory": store_factory} if store_factory else {}))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """One real redis-server for the session's Redis tests (each uses a key prefix of its own)."""
    from support.redis_server import redis_server
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


BACKENDS = ("threads", "celery")


def pytest_generate_tests(metafunc):
    """A test module that sets ``BOTH_BACKENDS = True`` runs each of its API tests twice: on the embedded
    default (worker threads, tasks.json) and on the distributed backend (a Celery worker, the Redis store)."""
    if getattr(metafunc.module, "BOTH_BACKENDS", False) and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS)


@pytest.fixture
def backend() -> str:
    return "threads"


@pytest.fixture
def api_factory(request, tmp_path, backend):
    """Start the app (store + workers) on tmp_path; optional protector factory and setting overrides.

    On the distributed backend: the API on the Celery queue and the shared Redis store, and a real Celery
    worker (in a thread of this process) running the tasks with the protector factory."""
    with contextlib.ExitStack() as stack:
        def start(protector_factory=pass_through, **overrides) -> TestClient:
            if backend == "threads":
                return stack.enter_context(TestClient(create_app(service=make_service(
                    tmp_path, protector_factory, **overrides))))
            from support.distributed import celery_settings, in_process_worker, wait_until
            settings = celery_settings(request.getfixturevalue("redis_url"), tmp_path, **overrides)
            stack.enter_context(in_process_worker(settings, protector_factory))
            client = stack.enter_context(TestClient(create_app(service=MediaCleanerService(settings))))
            wait_until(lambda: client.get("/health").json()["workers"] >= 1, 20, "the worker's first heartbeat")
            return client
        yield start


@pytest.fixture
def api(api_factory) -> TestClient:
    return api_factory()


def wait_for(client, task_id: str, statuses=("completed", "failed", "cancelled"), timeout: float = 60,
             headers: dict | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/status/{task_id}", headers=headers).json()
        if task["status"] in statuses:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout} s")


def stored_upload(data_dir: Path, task: dict) -> Path:
    """Where the server keeps a task's upload. The API does not say (server paths stay out of its answers)."""
    return data_dir / "videos_input" / f"{task['task_id']}{Path(task['original_filename']).suffix.lower()}"


def stored_output(data_dir: Path, task: dict) -> Path:
    """Where the server keeps a task's protected video."""
    return data_dir / "videos_output" / output_name(task["task_id"], task["original_filename"])


def httpx_transport(client: TestClient):
    """An ``httpx`` transport that sends each request through ``client`` (the app in this process), for code
    such as client.py that builds its own ``httpx.Client``. Public API on both sides: Starlette's TestClient
    is built on httpx2 when that is installed (the evaluation's timm brings it), whose transports httpx
    cannot use."""
    import httpx

    def forward(request: httpx.Request) -> httpx.Response:
        answer = client.request(request.method, str(request.url), headers=dict(request.headers),
                                content=request.read())
        return httpx.Response(answer.status_code, headers=list(answer.headers.multi_items()),
                              content=answer.content)
    return httpx.MockTransport(forward)
