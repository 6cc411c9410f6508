"""The running service: data folders, the task store and the worker pool, started and stopped together.

Start-up is where crashes are repaired: the store lock is taken (a second server on the same folder stops
here), tasks a crash left in ``processing`` go back to pending (or fail after too many attempts), and
whatever a crash left half-written is removed: ``videos_temp/``, unfinished uploads, stray outputs.
"""
from __future__ import annotations

import logging
import shutil
import time
from typing import Callable

from media_cleaner.config import Settings
from media_cleaner.media.ffmpeg import FFmpegInfo, inspect_ffmpeg
from media_cleaner.service.logs import setup_logging
from media_cleaner.service.auth import KeyRing
from media_cleaner.service.tasks import Task, TaskStatus
from media_cleaner.service.retention import Janitor, drop_input
from media_cleaner.service.queue.base import TaskQueue
from media_cleaner.service.store.base import TaskStore
from media_cleaner.service.store.json_store import JsonTaskStore
from media_cleaner.service.webhooks import WebhookSender
from media_cleaner.protection.weights import missing_weights
from media_cleaner.service.storage import configured_media
from media_cleaner.service.files import PARTIAL_OUTPUTS, STORED_UPLOAD, is_unfinished_upload, output_name
from media_cleaner.service.queue.threads import WorkerPool

log = logging.getLogger("media_cleaner")

# An unfinished upload untouched this long is a crash's leftover (the distributed backend's start-up).
STALE_UPLOAD_S = 24 * 3600



def configured_store(settings: Settings) -> TaskStore:
    """The store ``settings.store`` names: ``queue_db/tasks.json`` in the data folder (the embedded default) or
    the shared Redis at ``settings.redis_url`` (opened by many processes at once with the celery backend)."""
    if settings.store == "redis":
        from media_cleaner.service.store.redis_store import RedisTaskStore
        return RedisTaskStore(settings.redis_url, prefix=settings.redis_prefix, shared=settings.backend == "celery",
                              progress_interval_s=settings.progress_write_interval_s)
    return JsonTaskStore(settings.tasks_file, progress_interval_s=settings.progress_write_interval_s)


def configured_queue(settings: Settings, store: TaskStore) -> TaskQueue:
    """What ``settings.backend`` names: worker threads in this server (the default), or the Celery queue."""
    if settings.backend == "celery":
        from media_cleaner.service.queue.celery_queue import CeleryQueue
        return CeleryQueue(settings, store)
    return WorkerPool(settings, store)


class MediaCleanerService:
    """The store, the queue of workers, webhooks and retention, started and stopped together.

    ``store_factory(settings)`` makes the :class:`~.store.base.TaskStore` (default: :func:`configured_store`) and
    ``pool_factory(settings, store)`` the :class:`~.queue.base.TaskQueue` that runs the tasks (default:
    :func:`configured_queue`: worker threads, or the distributed Celery queue).
    """

    def __init__(self, settings: Settings, *,
                 pool_factory: Callable[[Settings, TaskStore], TaskQueue] = configured_queue,
                 store_factory: Callable[[Settings], TaskStore] = configured_store):
        self.settings = settings
        self.store = store_factory(settings)
        self.pool = pool_factory(settings, self.store)
        self.keys = KeyRing()
        self.webhooks = WebhookSender(secret=settings.webhook_secret, allow_private=settings.webhook_allow_private,
                                      max_attempts=settings.webhook_max_attempts,
                                      timeout_s=settings.webhook_timeout_s, record=self._record_webhook)
        self.media = configured_media(settings)
        self.janitor = Janitor(settings, self.store, self.media)
        self.ffmpeg: FFmpegInfo | None = None
        self.started = False

    def start(self) -> None:
        if self.started:
            return
        settings = self.settings
        settings.create_folders()
        setup_logging(settings)
        self.ffmpeg = inspect_ffmpeg(settings.ffmpeg)   # refuses one the pipeline cannot use, before anything
        self.keys = KeyRing.load(settings.api_keys_file, settings.api_keys)
        self.store.open()
        if not self.pool.distributed:   # else workers elsewhere are running tasks: their leases tell
            # The engines in processes of their own cannot crash the server: its crash is not the task's fault.
            for task in self.store.recover(settings.max_attempts, charge_crashes=not self.pool.isolated):
                log.warning("task %s was interrupted; now %s (attempt %d)", task.task_id, task.status.value,
                            task.attempts)
            self._remove_leftovers()
        else:
            self._remove_stale_uploads()
        self.webhooks.start()
        for task in self.store.list(limit=10 ** 9)[0]:
            if task.status.finished:   # what the last run (or the recovery above) left to do
                self._task_finished(task, resend=task.webhook_status in (None, "pending"))
        self.store.on_finished(self._task_finished)
        self.janitor.start()
        self.pool.start()   # and the models' warm-up, where the jobs will run
        self.started = True
        missing = missing_weights()
        if missing and not self.pool.distributed:
            log.warning("the face recognizers' weights are missing (%s): face-cloak tasks will fail until "
                        "`python -m media_cleaner fetch-models` is run", ", ".join(map(str, missing)))
        log.info("Media Cleaner ready: data folder %s, ffmpeg %s (version %s, from %s%s)", settings.data_dir,
                 self.ffmpeg.path, self.ffmpeg.version, self.ffmpeg.source,
                 "" if self.ffmpeg.libvmaf else "; no libvmaf: the evaluation's VMAF is left out")

    def stop(self) -> None:
        if self.started:
            self.pool.stop()
            self.janitor.stop()
            self.webhooks.stop()
            self.store.close()
            self.started = False

    def _task_finished(self, task: Task, resend: bool = True) -> None:
        """Runs under the store's lock when a task completes, fails or is cancelled: quick work only."""
        drop_input(self.settings, self.media, task)
        if resend:
            self.webhooks.notify(task)

    def _record_webhook(self, task_id: str, status: str, attempts: int) -> None:
        self.store.update(task_id, webhook_status=status, webhook_attempts=attempts)

    def _remove_stale_uploads(self) -> None:
        """With workers on other machines nothing on the shared volume can be assumed stale at start-up, except
        an upload to this API that stopped arriving a day ago (a crash in the middle of receiving it)."""
        cutoff = time.time() - STALE_UPLOAD_S
        for entry in self.settings.input_dir.iterdir():
            try:
                if is_unfinished_upload(entry.name) and entry.stat().st_mtime < cutoff:
                    log.info("removing an upload that stopped arriving: %s", entry.name)
                    entry.unlink(missing_ok=True)
            except FileNotFoundError:
                pass   # another API machine removed it first

    def _remove_leftovers(self) -> None:
        """Nothing is running yet, so anything in progress on disk is a crash's leftover."""
        settings = self.settings
        for entry in settings.temp_dir.iterdir():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        known = self.store.ids()
        for entry in settings.input_dir.iterdir():
            unfinished = is_unfinished_upload(entry.name)
            # A stored upload whose task was never recorded (crash between saving and recording).
            orphan = STORED_UPLOAD.match(entry.name) and entry.name.split(".")[0] not in known
            if entry.is_file() and (unfinished or orphan):
                log.info("removing leftover upload %s", entry.name)
                entry.unlink(missing_ok=True)
        for entry in settings.output_dir.glob(PARTIAL_OUTPUTS):   # an output or preview being written at the crash
            entry.unlink(missing_ok=True)
        for task in self.store.list(limit=10 ** 9)[0]:
            # An output renamed into place just before a crash, for a task that will run again.
            if task.status != TaskStatus.completed:
                (settings.output_dir / output_name(task.task_id, task.original_filename)).unlink(missing_ok=True)
