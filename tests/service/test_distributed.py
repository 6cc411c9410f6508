"""The distributed backend end to end, as an operator runs it on one machine: a real Redis, an API process
(``run_server.py`` with ``MEDIA_CLEANER_BACKEND=celery``) and worker processes (``python -m media_cleaner
worker``), each a separate OS process with its own Celery worker, sharing one data folder as the shared
volume. The workers run the scripted engines (``support.engine_factories``), which record every task they
run, so "exactly once" is counted, not assumed.
"""
from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
import redis

from media_cleaner.media.probe import probe_media
from media_cleaner.service.queue.celery_worker import CeleryWorker
from media_cleaner.service.store.json_store import JsonTaskStore
from media_cleaner.service.store.redis_store import RedisTaskStore
from media_cleaner.service.tasks import Task, TaskStatus
from support import engine_factories
from support.distributed import WorkerProcess, celery_settings, environment, wait_until
from support.live_server import ROOT, Server, free_port
from support.media_factory import make_video
from support.redis_server import RedisServer

SCRIPTED = "support.engine_factories:scripted"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    short, long = folder / "short.mp4", folder / "long.mp4"
    make_video(short, seconds=1, size="160x120", fps=10)
    make_video(long, seconds=8, size="160x120", fps=10)   # with the slow engine: 4 s of work
    return {"short": short, "long": long}


class Deployment:
    """An API process and worker processes on one Redis and one shared data folder."""

    def __init__(self, tmp_path, redis_url: str, **overrides):
        self.settings = celery_settings(redis_url, tmp_path / "shared", engine_factory=SCRIPTED, **overrides)
        self.settings.create_folders()
        self.tmp_path = tmp_path
        env = {name: str(getattr(self.settings, name)) for name in (
            "store", "backend", "redis_url", "redis_prefix", "queue_name", "worker_lease_s", "warm_up",
            "task_reports", "video_preset")}
        self.api = Server(self.settings.data_dir, **env)
        self.workers: dict[str, WorkerProcess] = {}
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def start(self, *names: str) -> "Deployment":
        for name in names:
            self.workers[name] = WorkerProcess(self.settings, name, MC_TEST_DIR=str(self.tmp_path)).start()
        self.api.start()
        wait_until(lambda: self.health()["backend"]["workers_alive"] == len(names), 60,
                   f"{len(names)} workers alive in /health")
        return self

    def health(self) -> dict:
        return self.api.get("/health")

    def upload(self, path, **fields) -> dict:
        with open(path, "rb") as fh:
            answer = httpx.post(self.api.url + "/upload", files={"file": (path.name, fh, "video/mp4")},
                                data={"audio_level": "none", **{k: str(v) for k, v in fields.items()}}, timeout=30)
        assert answer.status_code == 202, answer.text
        return answer.json()

    def runner_of(self, task_id: str) -> str:
        """The worker holding the task's lease now (its value is "<worker name>:<nonce>")."""
        holder = wait_until(lambda: self.redis.get(f"{self.settings.redis_prefix}lease:{task_id}"), 30,
                            f"a worker to take {task_id}")
        return holder.split(":")[0]

    def engine_runs(self) -> int:
        return len(engine_factories.engines(self.tmp_path))

    def partial_files(self) -> list[str]:
        return sorted(p.name for p in self.settings.output_dir.glob(".*.partial"))

    def stop(self) -> None:
        self.api.stop()
        for worker in self.workers.values():
            worker.kill()


@pytest.fixture
def deployment(tmp_path, redis_url):
    made: list[Deployment] = []

    def start(*names: str, **overrides) -> Deployment:
        made.append(Deployment(tmp_path, redis_url, **overrides).start(*names))
        return made[-1]
    yield start
    for each in made:
        each.stop()


def test_ten_uploads_on_two_worker_processes_complete_each_exactly_once(deployment, clips):
    mc = deployment("w1", "w2")
    health = mc.health()
    assert health["status"] == "ok" and health["backend"]["broker"] == "ok" and health["workers"] == 2
    ids = [mc.upload(clips["short"])["task_id"] for _ in range(10)]
    done = [mc.api.wait_status(task_id, lambda t: t["status"] in ("completed", "failed"), timeout=120)
            for task_id in ids]
    assert [t["status"] for t in done] == ["completed"] * 10
    assert [t["attempts"] for t in done] == [1] * 10
    assert mc.engine_runs() == 10   # no task ran twice
    ran = {name: worker.output().count("completed in") for name, worker in mc.workers.items()}
    assert sum(ran.values()) == 10 and all(ran.values()), ran   # both workers took tasks
    for task in done:
        assert httpx.get(mc.api.url + task["download_url"], timeout=30).status_code == 200
    # The queue's figures in /stats are read once a second.
    stats = wait_until(lambda: (s := mc.api.get("/stats"))["backend"]["queue_depth"] == 0 and s, 5, "an empty queue")
    assert stats["queue"]["completed"] == 10 and stats["backend"]["workers_alive"] == 2


def test_a_worker_killed_mid_task_its_task_completes_on_the_other(deployment, clips):
    mc = deployment("w1", "w2")
    task = mc.upload(clips["long"], every_n_frames=engine_factories.SLOW)
    mc.api.wait_status(task["task_id"], lambda t: t["progress"] > 10)
    victim = mc.runner_of(task["task_id"])
    mc.workers[victim].kill()   # SIGKILL: no clean-up, no acknowledgement
    done = mc.api.wait_status(task["task_id"], lambda t: t["status"] in ("completed", "failed"), timeout=120)
    survivor = next(name for name in mc.workers if name != victim)
    assert done["status"] == "completed" and done["attempts"] == 2
    assert task["task_id"] in mc.workers[survivor].output()
    output = mc.settings.output_dir / f"{task['task_id']}_long_protected.mp4"
    assert probe_media(output).frame_count == 80 and mc.partial_files() == []
    assert mc.engine_runs() == 2   # the killed run and the one that completed: never completed twice
    # The dead worker leaves /health within three missed heartbeats.
    wait_until(lambda: mc.health()["backend"]["workers_alive"] == 1, 20, "the dead worker to leave /health")


def test_a_worker_stopped_with_sigterm_gives_its_task_back_uncharged(deployment, clips):
    mc = deployment("w1")
    task = mc.upload(clips["long"], every_n_frames=engine_factories.SLOW)
    mc.api.wait_status(task["task_id"], lambda t: t["progress"] > 10)
    assert mc.workers["w1"].terminate(timeout=60) == 0   # Celery's warm shutdown, as systemd stops it
    back = mc.api.get(f"/status/{task['task_id']}")
    assert back["status"] == "pending" and back["attempts"] == 0 and mc.partial_files() == []
    mc.workers["w2"] = WorkerProcess(mc.settings, "w2", MC_TEST_DIR=str(mc.tmp_path)).start()
    done = mc.api.wait_status(task["task_id"], lambda t: t["status"] in ("completed", "failed"), timeout=120)
    assert done["status"] == "completed" and done["attempts"] == 1


def test_cancel_reaches_a_task_running_in_a_worker_process(deployment, clips):
    mc = deployment("w1")
    task = mc.upload(clips["long"], every_n_frames=engine_factories.SLOW)
    mc.api.wait_status(task["task_id"], lambda t: t["progress"] > 10)
    started = time.monotonic()
    assert httpx.delete(f"{mc.api.url}/tasks/{task['task_id']}", timeout=30).json()["status"] == "cancelled"
    wait_until(lambda: "stopped after cancel" in mc.workers["w1"].output(), 10, "the worker to stop the task")
    assert time.monotonic() - started < 1.5   # the worker's watcher reads its tasks twice a second
    assert mc.partial_files() == [] and not list(mc.settings.output_dir.glob(f"{task['task_id']}*"))
    assert mc.api.get(f"/status/{task['task_id']}")["status"] == "cancelled"
    later = mc.upload(clips["short"])   # the worker goes on with the next
    assert mc.api.wait_status(later["task_id"], lambda t: t["status"] == "completed", timeout=60)


def test_redis_restarted_mid_run_loses_nothing_accepted(tmp_path, clips):
    server = RedisServer(tmp_path / "redis").start()
    mc = Deployment(tmp_path, server.url)
    try:
        mc.start("w1")
        running = mc.upload(clips["long"], every_n_frames=engine_factories.SLOW)
        waiting = mc.upload(clips["short"])
        mc.api.wait_status(running["task_id"], lambda t: t["progress"] > 10)
        server.stop()
        with open(clips["short"], "rb") as fh:   # while Redis is away: refused, nothing half-accepted
            refused = httpx.post(mc.api.url + "/upload", files={"file": ("x.mp4", fh, "video/mp4")}, timeout=30)
        assert refused.status_code == 503 and "try again" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "5"
        health = wait_until(lambda: (h := mc.health())["status"] == "degraded" and h, 5, "/health to say degraded")
        assert health["backend"]["broker"].startswith("unreachable")
        server.start()
        for task in (running, waiting):
            done = mc.api.wait_status(task["task_id"], lambda t: t["status"] in ("completed", "failed"), timeout=120)
            assert done["status"] == "completed", done
        assert list(mc.settings.input_dir.iterdir()) == []   # the inputs dropped once done
        assert mc.api.get("/stats")["queue"]["total"] == 2   # the refused upload left no task
    finally:
        mc.stop()
        server.stop()


# ---------------------------------------------------------------------- the sweeper, on a real Redis

def _task(i: int, **fields) -> Task:
    return Task(task_id=f"{i:032x}", original_filename=f"v{i}.mp4", epsilon=0.12, video_strength=1.0,
                audio_level="none", every_n_frames=10, input_video=f"videos_input/{i:032x}.mp4", **fields)


@pytest.fixture
def sweeper(tmp_path, redis_url):
    worker = CeleryWorker(celery_settings(redis_url, tmp_path), name="sweeper")
    worker.store.open()
    yield worker
    worker.store.close()


def test_a_task_whose_worker_is_gone_goes_back_then_fails_after_max_attempts(sweeper):
    store: RedisTaskStore = sweeper.store
    store.add(_task(1))
    store.add(_task(2))
    store.claim(f"{1:032x}")
    store.update(f"{2:032x}", status=TaskStatus.processing, attempts=3)   # its third worker died too
    leftover = sweeper.settings.output_dir / f".{1:032x}_v1_protected.mp4.x.partial"
    sweeper.settings.create_folders()
    leftover.write_bytes(b"half")
    sweeper.sweep()   # no lease on either: their workers are gone
    again, given_up = store.get(f"{1:032x}"), store.get(f"{2:032x}")
    assert again.status == TaskStatus.pending and again.attempts == 1 and not leftover.exists()
    assert given_up.status == TaskStatus.failed and "stopped unexpectedly 3 times" in given_up.error_message
    assert sweeper._broker.llen(sweeper.settings.queue_name) == 1   # the first is queued again


def test_a_leased_task_is_left_alone(sweeper):
    store: RedisTaskStore = sweeper.store
    store.add(_task(1))
    assert sweeper.leases.take(f"{1:032x}", "elsewhere:1")
    store.claim(f"{1:032x}")
    sweeper.sweep()
    assert store.get(f"{1:032x}").status == TaskStatus.processing


def test_a_pending_task_without_a_message_is_sent_again(sweeper):
    """The API recorded it but could not send it (broker away, or a crash in between)."""
    sweeper.store.add(_task(1))
    sweeper.sweep()   # once could be a message in flight
    assert sweeper._broker.llen(sweeper.settings.queue_name) == 0
    sweeper.sweep()
    assert sweeper._broker.llen(sweeper.settings.queue_name) == 1


# ---------------------------------------------------------------------- the operator's commands

def _command(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "media_cleaner", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_move_tasks_copies_the_embedded_store_into_redis_once(tmp_path, redis_url):
    settings = celery_settings(redis_url, tmp_path / "old")
    old = JsonTaskStore(settings.tasks_file)
    old.open()
    for i, status in enumerate([TaskStatus.completed, TaskStatus.processing, TaskStatus.pending]):
        old.add(_task(i, status=status, attempts=1 if status != TaskStatus.pending else 0))
    env = environment(settings)
    refused = _command("move-tasks", env=env)   # the old server still holds the data folder
    assert refused.returncode == 2 and "already using the data folder" in refused.stderr
    old.close()
    before = settings.tasks_file.read_bytes()
    moved = _command("move-tasks", env=env)
    assert moved.returncode == 0, moved.stderr
    assert "moved 3 tasks" in moved.stdout and "1 completed" in moved.stdout
    store = RedisTaskStore(redis_url, prefix=settings.redis_prefix)
    assert [t.task_id for t in store.list()[0]] == [f"{i:032x}" for i in (2, 1, 0)]   # upload order kept
    interrupted = store.get(f"{1:032x}")
    assert interrupted.status == TaskStatus.pending and interrupted.attempts == 0
    assert store.queue_position(f"{1:032x}") == 1 and settings.tasks_file.read_bytes() == before
    again = _command("move-tasks", env=env)
    assert again.returncode == 0 and "moved 0 tasks" in again.stdout and "skipped 3" in again.stdout


def test_a_worker_without_redis_says_so_and_exits(tmp_path):
    settings = celery_settings(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    result = _command("worker", "--concurrency", "1", env=environment(settings))
    assert result.returncode == 2
    assert "cannot be reached" in result.stderr and "MEDIA_CLEANER_REDIS_URL" in result.stderr


def test_an_api_on_the_shared_volume_only_removes_uploads_that_stopped_a_day_ago(tmp_path, redis_url):
    """At start-up the embedded server removes whatever a crash left half-done; with workers on other machines
    the files in progress are theirs, so only an upload abandoned for a day goes."""
    import os

    from media_cleaner.service.core import MediaCleanerService
    settings = celery_settings(redis_url, tmp_path)
    settings.create_folders()
    stale, fresh = settings.input_dir / f".{1:032x}.part", settings.input_dir / f".{2:032x}.part"
    partial = settings.output_dir / f".{3:032x}_v_protected.mp4.x.partial"   # a worker writing it now
    for path in (stale, fresh, partial):
        path.write_bytes(b"x")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    service = MediaCleanerService(settings)
    service.start()
    service.stop()
    assert not stale.exists() and fresh.exists() and partial.exists()
