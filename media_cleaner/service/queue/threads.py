"""The worker pool: N threads that take pending tasks in upload order (FIFO) and run the pipeline.

Each worker gets ``cores // N`` threads for ffmpeg and torch, so N workers never oversubscribe the machine.
A task's failure is recorded on the task and never kills its worker. Cancelling a running task kills its
child processes at once (the pipeline's :class:`CancelToken`), and the partial output is removed. On
shutdown running tasks go back to pending without counting an attempt. How a run ends is recorded by
:class:`~.runner.TaskRunner`, which the distributed queue shares; before a task is marked completed its
protection report (cheap figures and a before/after sheet, :mod:`media_cleaner.evaluation.report`) is
stored in ``task.report``; a report that cannot be made is noted there and never fails the task.

With the real engines (no ``protector_factory``) and ``engine_processes`` on, each worker hands its tasks
to an engine process of its own (:mod:`media_cleaner.service.queue.engine_process`), so the engines never compete with
the API for this process's GIL; a cancel kills that process, and one that crashes fails only its task.
A custom ``protector_factory`` (tests) runs in the worker thread, as do the engines with the setting off.
"""
from __future__ import annotations

import logging
import threading
import time

from media_cleaner.config import Settings
from media_cleaner.protection.registry import build_protectors
from media_cleaner.service.queue.base import TaskQueue
from media_cleaner.service.queue.engine_process import EngineConfig, EngineProcess
from media_cleaner.service.queue.jobs import ProtectorFactory, warm_up
from media_cleaner.service.queue.runner import TaskRun, TaskRunner
from media_cleaner.service.storage import configured_media
from media_cleaner.service.store.base import TaskStore

log = logging.getLogger("media_cleaner.queue")


class WorkerPool(TaskQueue):
    distributed = False   # every task runs in this server

    def __init__(self, settings: Settings, store: TaskStore,
                 protector_factory: ProtectorFactory | None = None):
        self.settings = settings
        self.store = store
        # Only the real engines go to engine processes: a custom factory need not be importable by name there.
        self.isolated = protector_factory is None and settings.engine_processes
        self.protector_factory = protector_factory or (
            lambda params, threads: build_protectors(params, threads=threads))
        self._engines: list[EngineProcess] = []
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, TaskRun] = {}
        self._runner = TaskRunner(settings, store, configured_media(settings), self.protector_factory)
        self._running_lock = threading.Lock()

    # ----------------------------------------------------------------- control
    @property
    def size(self) -> int:
        return self.settings.max_concurrent_tasks

    def start(self) -> None:
        settings = self.settings
        for i in range(self.size):
            name = f"worker-{i + 1}"
            engine = None
            if self.isolated:
                engine = EngineProcess(EngineConfig.for_worker(settings), name)
                self._engines.append(engine)
            thread = threading.Thread(target=self._work, args=(engine,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker pool started: %d workers, %d threads each%s", self.size, settings.threads_per_worker,
                 ", engines in child processes" if self.isolated else "")
        # The models load where the jobs run: each engine process warms up its own (see EngineConfig), so this
        # process stays light; without them, once here in the background.
        if settings.warm_up and not self.isolated:
            threading.Thread(target=warm_up, kwargs={"report": settings.task_reports}, name="warm-up",
                             daemon=True).start()

    def notify(self, task_id: str) -> None:
        """A task was queued: wake one idle worker."""
        with self._wake:
            self._wake.notify()

    def busy(self) -> int:
        with self._running_lock:
            return len(self._running)

    def stalled(self) -> int:
        """Running tasks that have made no progress for ``ffmpeg_stall_timeout_s`` (reported by /health)."""
        now = time.monotonic()
        with self._running_lock:
            return sum(now - running.last_progress > self.settings.ffmpeg_stall_timeout_s
                       for running in self._running.values())

    def cancel(self, task_id: str) -> bool:
        """Stop a running task now (its new status must already be persisted). False if not running."""
        with self._running_lock:
            running = self._running.get(task_id)
        if running is None:
            return False
        running.token.cancel()
        return True

    def health(self) -> dict:
        return {"backend": "threads"}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; running tasks are interrupted and go back to pending."""
        self._stopping.set()
        with self._running_lock:
            for running in self._running.values():
                running.shutdown = True
                running.token.cancel()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for engine in self._engines:   # each worker kills its own; this catches one that did not stop in time
            engine.kill()
        log.info("worker pool stopped")

    # ----------------------------------------------------------------- the work
    def _work(self, engine: EngineProcess | None) -> None:
        try:
            if engine is not None:
                self._start_engine(engine)   # now, so that it loads the models before the first task
            while not self._stopping.is_set():
                task = self.store.claim_next()
                if task is None:
                    with self._wake:
                        self._wake.wait(timeout=1.0)   # also re-checks the store now and then
                    continue
                running = TaskRun(task)
                with self._running_lock:
                    self._running[task.task_id] = running
                try:
                    self._runner.run(task, running, engine, stopping=self._stopping.is_set)
                except Exception:   # never let one task kill the worker
                    log.exception("task %s: unexpected error in worker", task.task_id)
                finally:
                    with self._running_lock:
                        self._running.pop(task.task_id, None)
        finally:
            if engine is not None:
                engine.kill()

    @staticmethod
    def _start_engine(engine: EngineProcess) -> None:
        try:
            engine.start()
        except Exception:   # the first task tries again and reports what is wrong
            log.exception("%s: the engine process could not be started", engine.name)
