"""One task's run, from claimed to finished: what every queue does the same way once a worker has a task.

The worker threads (:mod:`.threads`) and the Celery workers (:mod:`.celery_queue`) only differ in how a task
reaches a worker; :class:`TaskRunner` then builds its :class:`~.jobs.Job`, runs it (in the worker's engine
process, or in the calling thread), and records the outcome:

- completed, with its report; a task cancelled in the instant before has its output removed;
- failed, with a message that says what to do (a media error, a crashed or stalled engine, a vanished upload);
- cancelled by its owner: the partial output removed;
- given back to the queue, not counting the attempt, when the worker stops (shutdown);
- superseded: the task was taken back from this worker and claimed again by another (its lease ran out);
  this run then changes nothing, not even the files, which now belong to the other run.

Every change is fenced by the run's attempt number (``TaskStore.transition(attempt=...)``), so a run that lost
its task cannot complete it a second time. Writes that fail because a shared store is briefly unreachable are
retried; progress that cannot be written is skipped.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from enum import Enum
from typing import Callable

from media_cleaner.config import Settings
from media_cleaner.media.cancel import CancelToken, TaskCancelled
from media_cleaner.media.probe import MediaError
from media_cleaner.params import ProtectionParams
from media_cleaner.service.files import output_key, preview_key, preview_name
from media_cleaner.service.queue.engine_process import EngineCrashed, EngineProcess, EngineStalled
from media_cleaner.service.queue.jobs import Job, ProtectorFactory, run_job
from media_cleaner.service.storage import MediaStorage
from media_cleaner.service.store.base import StoreUnavailable, TaskNotFound, TaskStore
from media_cleaner.service.tasks import Task, TaskStatus, utc_now

log = logging.getLogger("media_cleaner.queue")

# How long a finished run keeps retrying its last write while a shared store is unreachable; after that the
# task's lease runs out and the task runs again elsewhere.
STORE_RETRY_S = 600.0


class Outcome(str, Enum):
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    requeued = "requeued"       # the worker stopped; the task waits for the next one
    superseded = "superseded"   # another worker runs the task now


class TaskRun:
    """What a worker knows about the task it is running; the queue sets the flags from other threads."""

    def __init__(self, task: Task) -> None:
        self.task_id = task.task_id
        self.attempt = task.attempts      # the fence: this run's claim
        self.token = CancelToken()
        self.shutdown = False             # stopped because the worker is stopping, not by the owner
        self.superseded = False           # taken back from this worker (its lease ran out)
        self.last_progress = time.monotonic()


def build_job(settings: Settings, media: MediaStorage, task: Task) -> Job:
    """The picklable description of ``task``'s work: local paths from ``media``, limits from ``settings``."""
    task_id = task.task_id
    return Job(task_id=task_id, input_path=media.local_path(task.input_video),
               output_path=media.local_path(output_key(task_id, task.original_filename)),
               params=ProtectionParams(task.epsilon, task.video_strength, task.every_n_frames, task.audio_level),
               temp_dir=settings.temp_dir / task_id, threads=settings.threads_per_worker,
               crf=settings.video_crf, preset=settings.video_preset, audio_bitrate=settings.audio_bitrate,
               ffmpeg=settings.ffmpeg, stall_timeout_s=settings.ffmpeg_stall_timeout_s,
               max_duration_s=settings.max_duration_s, data_dir=settings.data_dir,
               preview_path=media.local_path(preview_key(task_id)) if settings.task_reports else None)


class TaskRunner:
    def __init__(self, settings: Settings, store: TaskStore, media: MediaStorage,
                 protector_factory: ProtectorFactory):
        self.settings = settings
        self.store = store
        self.media = media
        self.protector_factory = protector_factory

    def run(self, task: Task, run: TaskRun, engine: EngineProcess | None,
            stopping: Callable[[], bool] = lambda: False) -> Outcome:
        """Run the claimed ``task`` (in ``engine``, or here without one) and record how it ended."""
        task_id, settings = task.task_id, self.settings
        job = build_job(settings, self.media, task)
        started = time.monotonic()
        log.info("task %s started by %s (attempt %d)", task_id, threading.current_thread().name, task.attempts)

        def on_progress(fraction: float) -> None:
            run.last_progress = time.monotonic()
            elapsed = time.monotonic() - started
            eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
            try:
                self.store.update_progress(task_id, 100.0 * fraction * 0.99, eta)   # 100 only when stored
            except StoreUnavailable:
                pass   # the next report tries again; the work goes on

        try:
            if stopping() or self._current(task_id, run) is None:
                raise TaskCancelled()   # cancelled or shut down between claim and start
            if engine is None:
                report = run_job(job, self.protector_factory, on_progress, run.token)
            else:
                report = engine.run(job, on_progress, run.token, stall_s=settings.task_stall_timeout_s)
        except TaskCancelled:
            return self._after_interrupt(run, job, stopping())
        except MediaError as exc:
            return self._fail(run, job, str(exc))
        except (EngineCrashed, EngineStalled) as exc:
            log.error("task %s: %s", task_id, exc)
            return self._fail(run, job, str(exc))
        except FileNotFoundError as exc:
            if not job.input_path.exists():
                return self._fail(run, job, "The uploaded file is no longer on the server; upload the video again.")
            _log_failure(task_id, exc)
            return self._fail(run, job, f"Processing failed unexpectedly ({exc}).")
        except Exception as exc:
            _log_failure(task_id, exc)
            kind = getattr(exc, "remote_type", type(exc).__name__)
            return self._fail(run, job, f"Processing failed unexpectedly ({kind}: {exc}). The server log "
                                        f"has the details under task id {task_id}.")
        finally:
            shutil.rmtree(job.temp_dir, ignore_errors=True)

        output = output_key(task_id, task.original_filename)
        self.media.publish(output)
        if job.preview_path is not None and job.preview_path.exists():
            self.media.publish(preview_key(task_id))
        done = durably(lambda: self.store.transition(
            task_id, [TaskStatus.processing], attempt=run.attempt, status=TaskStatus.completed, progress=100.0,
            eta_s=None, completed_at=utc_now(), output_video=output, report=report))
        if done is not None:
            log.info("task %s completed in %.1f s -> %s", task_id, time.monotonic() - started,
                     job.output_path.name)
            return Outcome.completed
        if self._lost(run):
            return Outcome.superseded
        remove_outputs(job)   # cancelled in the instant between the last frame and here
        return Outcome.cancelled

    # ----------------------------------------------------------------- outcomes
    def _current(self, task_id: str, run: TaskRun) -> Task | None:
        """The task while this run still holds it; None when it was cancelled, deleted or taken back."""
        try:
            task = self.store.get(task_id)
        except TaskNotFound:
            return None
        return task if task.status == TaskStatus.processing and task.attempts == run.attempt else None

    def _lost(self, run: TaskRun) -> bool:
        """True when the task was taken back from this run (and perhaps claimed by another since)."""
        if run.superseded:
            return True
        try:
            task = durably(lambda: self.store.get(run.task_id))
        except TaskNotFound:
            return False
        return task.attempts != run.attempt or task.status == TaskStatus.pending

    def _after_interrupt(self, run: TaskRun, job: Job, stopping: bool) -> Outcome:
        if self._lost(run):
            return Outcome.superseded
        remove_outputs(job)
        if run.shutdown or stopping:
            # Not the task's fault: back to the queue, and this attempt does not count.
            durably(lambda: self.store.transition(
                run.task_id, [TaskStatus.processing], attempt=run.attempt, status=TaskStatus.pending,
                progress=0.0, eta_s=None, started_at=None, attempts=max(0, run.attempt - 1)))
            return Outcome.requeued
        durably(lambda: self.store.transition(
            run.task_id, [TaskStatus.processing], attempt=run.attempt, status=TaskStatus.cancelled,
            completed_at=utc_now(), eta_s=None))
        log.info("task %s stopped after cancel", run.task_id)
        return Outcome.cancelled

    def _fail(self, run: TaskRun, job: Job, message: str) -> Outcome:
        if self._lost(run):
            return Outcome.superseded
        remove_outputs(job)
        durably(lambda: self.store.transition(
            run.task_id, [TaskStatus.processing], attempt=run.attempt, status=TaskStatus.failed, eta_s=None,
            completed_at=utc_now(), error_message=message))
        return Outcome.failed



def durably(write: Callable):
    """``write()``, retried while the store is unreachable (a shared store restarting), for a while."""
    deadline = time.monotonic() + STORE_RETRY_S
    delay = 0.2
    while True:
        try:
            return write()
        except StoreUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("the task store is unreachable (%s); trying again in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def remove_outputs(job: Job) -> None:
    """The task's output and preview, and the half-written files a killed engine process leaves behind (it
    never runs its own clean-up)."""
    for final in (job.output_path, job.output_path.with_name(preview_name(job.task_id))):
        final.unlink(missing_ok=True)
        for partial in final.parent.glob(f".{final.name}*.partial"):
            partial.unlink(missing_ok=True)


def _log_failure(task_id: str, exc: BaseException) -> None:
    """The traceback of an unexpected failure: the engine process's own when it happened there."""
    remote = getattr(exc, "remote_traceback", None)
    if remote:
        log.error("task %s failed in its engine process:\n%s", task_id, remote.rstrip())
    else:
        log.error("task %s failed", task_id, exc_info=exc)
