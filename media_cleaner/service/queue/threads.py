"""The worker pool: N threads that take pending tasks in upload order (FIFO) and run the pipeline.

Each worker gets ``cores // N`` threads for ffmpeg and torch, so N workers never oversubscribe the machine.
A task's failure is recorded on the task and never kills its worker. Cancelling a running task kills its
child processes at once (the pipeline's :class:`CancelToken`), and the partial output is removed. On
shutdown running tasks go back to pending without counting an attempt. Before a task is marked completed
its protection report (cheap figures and a before/after sheet, :mod:`media_cleaner.evaluation.report`) is
stored in ``task.report``; a report that cannot be made is noted there and never fails the task.

With the real engines (no ``protector_factory``) and ``engine_processes`` on, each worker hands its tasks
to an engine process of its own (:mod:`media_cleaner.service.queue.engine_process`), so the engines never compete with
the API for this process's GIL; a cancel kills that process, and one that crashes fails only its task.
A custom ``protector_factory`` (tests) runs in the worker thread, as do the engines with the setting off.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from media_cleaner.config import Settings
from media_cleaner.service.queue.engine_process import (
    EngineConfig,
    EngineCrashed,
    EngineProcess,
    EngineStalled,
)
from media_cleaner.service.files import output_name, preview_name
from media_cleaner.service.queue.jobs import Job, ProtectorFactory, run_job, warm_up
from media_cleaner.service.tasks import TaskStatus, utc_now
from media_cleaner.params import ProtectionParams
from media_cleaner.media.cancel import CancelToken, TaskCancelled
from media_cleaner.media.probe import MediaError
from media_cleaner.protection.registry import build_protectors
from media_cleaner.service.queue.base import TaskQueue
from media_cleaner.service.store.base import TaskNotFound, TaskStore

log = logging.getLogger("media_cleaner.queue")


class _Running:
    """What the pool knows about a task a worker is busy with."""

    def __init__(self) -> None:
        self.token = CancelToken()
        self.shutdown = False   # cancelled because the server is stopping, not by the user
        self.last_progress = time.monotonic()


class WorkerPool(TaskQueue):
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
        self._running: dict[str, _Running] = {}
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
                engine = EngineProcess(EngineConfig(
                    factory=settings.engine_factory, threads=settings.threads_per_worker,
                    warm_up=settings.warm_up, warm_up_report=settings.warm_up and settings.task_reports,
                    log_level=settings.log_level, parent_pid=os.getpid()), name)
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

    def notify(self) -> None:
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
                running = _Running()
                with self._running_lock:
                    self._running[task.task_id] = running
                try:
                    self._run(task.task_id, running, engine)
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

    def _run(self, task_id: str, running: _Running, engine: EngineProcess | None) -> None:
        task = self.store.get(task_id)
        settings = self.settings
        input_path = settings.data_dir / task.input_video
        output_path = settings.output_dir / output_name(task_id, task.original_filename)
        params = ProtectionParams(task.epsilon, task.video_strength, task.every_n_frames, task.audio_level)
        job = Job(task_id=task_id, input_path=input_path, output_path=output_path, params=params,
                  temp_dir=settings.temp_dir / task_id, threads=settings.threads_per_worker,
                  crf=settings.video_crf, preset=settings.video_preset, audio_bitrate=settings.audio_bitrate,
                  ffmpeg=settings.ffmpeg, stall_timeout_s=settings.ffmpeg_stall_timeout_s,
                  max_duration_s=settings.max_duration_s,
                  data_dir=settings.data_dir,
                  preview_path=settings.output_dir / preview_name(task_id) if settings.task_reports else None)
        started = time.monotonic()
        log.info("task %s started by %s (attempt %d)", task_id, threading.current_thread().name, task.attempts)

        def on_progress(fraction: float) -> None:
            running.last_progress = time.monotonic()
            elapsed = time.monotonic() - started
            eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
            self.store.update_progress(task_id, 100.0 * fraction * 0.99, eta)   # 100 only when stored

        try:
            if self._stopping.is_set() or self.store.get(task_id).status != TaskStatus.processing:
                raise TaskCancelled()   # cancelled or shut down between claim and start
            if engine is None:
                report = run_job(job, self.protector_factory, on_progress, running.token)
            else:
                report = engine.run(job, on_progress, running.token, stall_s=settings.task_stall_timeout_s)
        except TaskCancelled:
            self._after_interrupt(task_id, running, output_path)
            return
        except MediaError as exc:
            self._fail(task_id, str(exc), output_path)
            return
        except (EngineCrashed, EngineStalled) as exc:
            log.error("task %s: %s", task_id, exc)
            self._fail(task_id, str(exc), output_path)
            return
        except FileNotFoundError as exc:
            if not input_path.exists():
                self._fail(task_id, "The uploaded file is no longer on the server; upload the video again.",
                           output_path)
                return
            _log_failure(task_id, exc)
            self._fail(task_id, f"Processing failed unexpectedly ({exc}).", output_path)
            return
        except Exception as exc:
            _log_failure(task_id, exc)
            kind = getattr(exc, "remote_type", type(exc).__name__)
            self._fail(task_id, f"Processing failed unexpectedly ({kind}: {exc}). The server log "
                                f"has the details under task id {task_id}.", output_path)
            return
        finally:
            shutil.rmtree(job.temp_dir, ignore_errors=True)

        done = self.store.transition(
            task_id, [TaskStatus.processing], status=TaskStatus.completed, progress=100.0, eta_s=None,
            completed_at=utc_now(), output_video=str(output_path.relative_to(settings.data_dir)), report=report)
        if done is None:   # cancelled in the instant between the last frame and here
            output_path.unlink(missing_ok=True)
            (settings.output_dir / preview_name(task_id)).unlink(missing_ok=True)
        else:
            log.info("task %s completed in %.1f s -> %s", task_id, time.monotonic() - started, output_path.name)

    def _after_interrupt(self, task_id: str, running: _Running, output_path: Path) -> None:
        self._remove_outputs(task_id, output_path)
        try:
            task = self.store.get(task_id)
        except TaskNotFound:
            return
        if running.shutdown or (self._stopping.is_set() and task.status == TaskStatus.processing):
            # Not the task's fault: back to the queue, and this attempt does not count.
            self.store.transition(task_id, [TaskStatus.processing], status=TaskStatus.pending, progress=0.0,
                                  eta_s=None, started_at=None, attempts=max(0, task.attempts - 1))
        else:
            self.store.transition(task_id, [TaskStatus.processing], status=TaskStatus.cancelled,
                                  completed_at=utc_now(), eta_s=None)
            log.info("task %s stopped after cancel", task_id)

    def _remove_outputs(self, task_id: str, output_path: Path) -> None:
        """The task's output and preview, and the half-written files a killed engine process leaves behind
        (it never runs its own clean-up)."""
        preview = self.settings.output_dir / preview_name(task_id)
        for final in (output_path, preview):
            final.unlink(missing_ok=True)
            for partial in final.parent.glob(f".{final.name}*.partial"):
                partial.unlink(missing_ok=True)

    def _fail(self, task_id: str, message: str, output_path: Path) -> None:
        self._remove_outputs(task_id, output_path)
        self.store.transition(task_id, [TaskStatus.processing], status=TaskStatus.failed, eta_s=None,
                              completed_at=utc_now(), error_message=message)


def _log_failure(task_id: str, exc: BaseException) -> None:
    """The traceback of an unexpected failure: the engine process's own when it happened there."""
    remote = getattr(exc, "remote_traceback", None)
    if remote:
        log.error("task %s failed in its engine process:\n%s", task_id, remote.rstrip())
    else:
        log.error("task %s failed", task_id, exc_info=exc)

