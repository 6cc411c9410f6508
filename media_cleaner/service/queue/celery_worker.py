"""A processing machine's worker: ``python -m media_cleaner worker`` runs a Celery worker holding the engines.

It consumes the queue with Celery's thread pool, ``--concurrency`` tasks at once (default: the
``max_concurrent_tasks`` setting). It keeps as many engine processes (:mod:`.engine_process`), started and
warmed up with the worker, and each run borrows one, as the embedded worker threads do: a cancel kills that
process at once (the next run gets a fresh one), a crash of it fails only its task. A task's run is the one the embedded queue makes (:class:`~.runner.TaskRunner`).

Around the runs, three background threads:

- the **watcher** (every half second): renews the lease of every task running here, and reads their records,
  so that a cancel made on any API machine stops the task within about a second, and a task taken back from
  this worker (its lease ran out while Redis was away) stops without touching the other run's files;
- the **heartbeat** (every 2 s): what this worker holds, for ``/health`` and ``/stats``;
- the **sweeper** (every few seconds, on every worker): a task in processing whose lease has run out lost its
  worker (kill -9, machine gone). It goes back to pending and to the queue, the attempt counted, or fails
  with a clear message after ``max_attempts``; its partial files are removed. A pending task for which the
  broker holds no message (the API could not send it, or crashed between recording and sending) is sent
  again. Several sweepers at once are safe: every change is a fenced compare-and-set, and a duplicate
  message is dropped by the claim.

A stop (SIGTERM or Ctrl-C: Celery's warm shutdown) interrupts the running tasks, which go back to the queue
without counting the attempt, and waits for them to do so.
"""
from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
import time

import redis

from media_cleaner.config import Settings
from media_cleaner.protection.registry import build_protectors
from media_cleaner.service.logs import setup_logging
from media_cleaner.service.queue.celery_queue import PROTECT_TASK, make_celery, queue_depth, send_task
from media_cleaner.service.queue.engine_process import EngineConfig, EngineProcess
from media_cleaner.service.queue.jobs import ProtectorFactory
from media_cleaner.service.queue.leases import TaskLeases, WorkerRegistry
from media_cleaner.service.queue.runner import Outcome, TaskRun, TaskRunner, build_job, durably, remove_outputs
from media_cleaner.service.retention import drop_input
from media_cleaner.service.storage import configured_media
from media_cleaner.service.store.base import StoreUnavailable
from media_cleaner.service.store.redis_store import RedisTaskStore
from media_cleaner.service.tasks import Task, TaskStatus, utc_now
from media_cleaner.service.webhooks import WebhookSender

log = logging.getLogger("media_cleaner.worker")

WATCH_S = 0.5   # how often running tasks' records are read (cancel latency) and their leases renewed
SWEEP_LIMIT = 200   # tasks looked at per sweep and state


class CeleryWorker:
    def __init__(self, settings: Settings, *, name: str | None = None,
                 protector_factory: ProtectorFactory | None = None):
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.store = RedisTaskStore(settings.redis_url, prefix=settings.redis_prefix, shared=True,
                                    progress_interval_s=settings.progress_write_interval_s)
        self.app = make_celery(settings)
        self.leases = TaskLeases(self.store.client, settings.redis_prefix, settings.worker_lease_s)
        self.registry = WorkerRegistry(self.store.client, settings.redis_prefix)
        self.media = configured_media(settings)
        self._broker = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=5, decode_responses=True)
        self.isolated = protector_factory is None and settings.engine_processes
        self.runner = TaskRunner(settings, self.store, self.media, protector_factory or (
            lambda params, threads: build_protectors(params, threads=threads)))
        self.webhooks = WebhookSender(secret=settings.webhook_secret, allow_private=settings.webhook_allow_private,
                                      max_attempts=settings.webhook_max_attempts,
                                      timeout_s=settings.webhook_timeout_s, record=self._record_webhook)
        self._engines: queue.Queue[EngineProcess | None] = queue.Queue()
        self._all_engines: list[EngineProcess] = []
        self._runs: dict[str, tuple[TaskRun, str]] = {}   # task id -> (its run, our lease's owner value)
        self._runs_lock = threading.Lock()
        self._stopping = threading.Event()
        self._completed = 0
        self._missing_messages: set[str] = set()   # pending tasks the last sweep found with an empty queue
        self._beat_now = threading.Event()   # a run started or ended: tell /health at once
        app = self.app

        @app.task(name=PROTECT_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True, shared=False)
        def protect(task_id: str) -> None:
            self.execute(task_id)

    # ----------------------------------------------------------------- life
    def start(self) -> None:
        self.store.open()
        self.store.on_finished(self._task_finished)
        self.webhooks.start()
        settings = self.settings
        for i in range(settings.max_concurrent_tasks):
            engine = None
            if self.isolated:
                engine = EngineProcess(EngineConfig.for_worker(settings), f"{self.name}-{i + 1}")
                self._all_engines.append(engine)
                try:
                    engine.start()   # warms up while the worker connects
                except Exception:
                    log.exception("%s: the engine process could not be started", engine.name)
            self._engines.put(engine)
        for target, name in ((self._watch, "watcher"), (self._heartbeat, "heartbeat"), (self._sweep, "sweeper")):
            threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True).start()
        log.info("worker %s: %d slots, %d threads each, queue %r", self.name, settings.max_concurrent_tasks,
                 settings.threads_per_worker, settings.queue_name)

    def begin_shutdown(self) -> None:
        """Interrupt the running tasks: each goes back to the queue without counting the attempt."""
        self._stopping.set()
        with self._runs_lock:
            for run, _ in self._runs.values():
                run.shutdown = True
                run.token.cancel()

    def stop(self) -> None:
        self.begin_shutdown()
        for engine in self._all_engines:
            engine.kill()
        self.webhooks.stop()
        try:
            self.registry.leave(self.name)
        except Exception:
            pass
        self.store.close()

    def run_forever(self, loglevel: str = "INFO") -> None:
        """Start, consume until told to stop (SIGTERM, Ctrl-C), stop."""
        from celery import signals

        signals.worker_shutting_down.connect(lambda **_: self.begin_shutdown(), weak=False)
        self.start()
        try:
            self.app.Worker(hostname=f"{self.name}@{socket.gethostname()}", pool="threads",
                            concurrency=self.settings.max_concurrent_tasks, queues=[self.settings.queue_name],
                            loglevel=loglevel, without_gossip=True, without_mingle=True, task_events=True,
                            redirect_stdouts=False).start()
        finally:
            self.stop()

    # ----------------------------------------------------------------- one message
    def execute(self, task_id: str) -> None:
        """The Celery task's body: run ``task_id`` unless it is running elsewhere or no longer waits."""
        if self._stopping.is_set():
            send_task(self.app, self.settings, task_id)   # hand it on; this worker is leaving
            return
        owner = f"{self.name}:{secrets.token_hex(4)}"
        if not durably(lambda: self.leases.take(task_id, owner)):
            log.info("task %s: already running on another worker; message dropped", task_id)
            return
        try:
            task = durably(lambda: self.store.claim(task_id))
            if task is None:   # cancelled, finished or deleted since: a late or repeated message
                log.info("task %s: no longer waiting; message dropped", task_id)
                return
            run = TaskRun(task)
            with self._runs_lock:
                self._runs[task_id] = (run, owner)
            self._beat_now.set()
            engine = self._engines.get()
            try:
                outcome = self.runner.run(task, run, engine, stopping=self._stopping.is_set)
            finally:
                self._engines.put(engine)
                with self._runs_lock:
                    self._runs.pop(task_id, None)
                self._beat_now.set()
            if outcome == Outcome.completed:
                self._completed += 1
            elif outcome == Outcome.requeued:
                send_task(self.app, self.settings, task_id)
        finally:
            try:
                self.leases.release(task_id, owner)
            except Exception:
                pass   # it expires by itself

    # ----------------------------------------------------------------- background threads
    def _watch(self) -> None:
        renew_every = max(WATCH_S, self.settings.worker_lease_s / 3)
        last_renew = 0.0
        unreachable = False
        while not self._stopping.wait(WATCH_S):
            with self._runs_lock:
                runs = dict(self._runs)
            if not runs:
                continue
            try:
                renew = time.monotonic() - last_renew >= renew_every
                if renew:
                    last_renew = time.monotonic()
                for task_id, (run, owner) in runs.items():
                    if renew and not self.leases.renew(task_id, owner) and not self.leases.take(task_id, owner):
                        log.warning("task %s: its lease went to another worker; stopping here", task_id)
                        run.superseded = True
                        run.token.cancel()
                        continue
                    task = self.store.get(task_id)
                    if task.attempts != run.attempt or task.status == TaskStatus.pending:
                        run.superseded = True   # taken back by a sweeper: the files are the next run's
                        run.token.cancel()
                    elif task.status != TaskStatus.processing:
                        run.token.cancel()   # cancelled on an API machine
            except KeyError:   # deleted
                pass
            except (StoreUnavailable, redis.exceptions.RedisError, OSError) as exc:
                if not unreachable:   # once per outage: the runs go on, and their writes wait for Redis
                    log.warning("worker %s: cannot watch its tasks while Redis is unreachable (%s)", self.name, exc)
                unreachable = True
                continue
            except Exception:
                log.exception("worker %s: watching its tasks failed", self.name)
            if unreachable:
                log.info("worker %s: Redis is back; watching its tasks again", self.name)
                unreachable = False

    def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._runs_lock:
                runs = [run for run, _ in self._runs.values()]
            try:
                self.registry.beat(self.name, {
                    "host": socket.gethostname(), "pid": os.getpid(), "slots": self.settings.max_concurrent_tasks,
                    "busy": len(runs), "completed": self._completed,
                    "stalled": sum(now - run.last_progress > self.settings.ffmpeg_stall_timeout_s for run in runs)})
            except Exception as exc:
                log.debug("heartbeat failed: %s", exc)
            self._beat_now.wait(self.registry.beat_s)
            self._beat_now.clear()

    def _sweep(self) -> None:
        interval = min(5.0, max(0.5, self.settings.worker_lease_s / 2))
        while not self._stopping.wait(interval):
            try:
                self.sweep()
            except (StoreUnavailable, redis.exceptions.RedisError, OSError) as exc:
                log.debug("sweep skipped: %s", exc)
            except Exception:
                log.exception("worker %s: the sweep failed", self.name)

    def sweep(self) -> None:
        """Bring back tasks whose worker is gone, and send tasks the broker has no message for."""
        with self._runs_lock:
            mine = set(self._runs)   # alive by definition, even while Redis lost our lease
        processing, _ = self.store.list(status=TaskStatus.processing, limit=SWEEP_LIMIT)
        leased = self.leases.held([task.task_id for task in processing])
        for task in processing:
            if task.task_id not in leased and task.task_id not in mine:
                self._take_back(task)
        pending, _ = self.store.list(status=TaskStatus.pending, limit=SWEEP_LIMIT)
        if not pending or queue_depth(self._broker, self.settings):
            self._missing_messages = set()
            return
        # An empty queue with tasks pending, twice in a row: their messages are lost (or were never sent).
        waiting = {task.task_id for task in pending}
        for task_id in waiting & self._missing_messages:
            if task_id not in self.leases.held([task_id]):
                log.warning("task %s: pending without a queued message; sending it again", task_id)
                send_task(self.app, self.settings, task_id)
        self._missing_messages = waiting

    def _take_back(self, task: Task) -> None:
        """``task``'s worker is gone (its lease expired): queue it again, or give it up after max_attempts."""
        settings = self.settings
        if task.attempts >= settings.max_attempts:
            changed = self.store.transition(
                task.task_id, [TaskStatus.processing], attempt=task.attempts, status=TaskStatus.failed,
                completed_at=utc_now(), eta_s=None,
                error_message=(f"The worker processing this video stopped unexpectedly {task.attempts} times "
                               f"(killed, or its machine went away), so it was given up. Upload the video "
                               f"again; if it keeps failing, try a shorter clip."))
        else:
            changed = self.store.transition(task.task_id, [TaskStatus.processing], attempt=task.attempts,
                                            status=TaskStatus.pending, progress=0.0, eta_s=None, started_at=None)
        if changed is None:
            return   # it finished, was cancelled, or another sweeper was first
        remove_outputs(build_job(settings, self.media, task))   # what the lost run left half-written
        log.warning("task %s: its worker is gone (no lease for %.0f s); now %s (attempt %d of %d)", task.task_id,
                    settings.worker_lease_s, changed.status.value, task.attempts, settings.max_attempts)
        if changed.status == TaskStatus.pending:
            send_task(self.app, settings, task.task_id)

    # ----------------------------------------------------------------- what a finished task triggers
    def _task_finished(self, task: Task) -> None:
        drop_input(self.settings, self.media, task)
        self.webhooks.notify(task)

    def _record_webhook(self, task_id: str, status: str, attempts: int) -> None:
        try:
            self.store.update(task_id, webhook_status=status, webhook_attempts=attempts)
        except (KeyError, StoreUnavailable):
            pass


def run_worker(settings: Settings, *, name: str | None = None) -> None:
    """``python -m media_cleaner worker``: log like the server (to ``server_logs/worker-<name>.log``) and run."""
    worker = CeleryWorker(settings, name=name)
    settings.create_folders()
    setup_logging(worker.settings, stem=f"worker-{worker.name}")
    worker.run_forever(loglevel=settings.log_level)
