"""Retention: private videos do not stay on the server longer than they must.

- An upload is deleted as soon as its task finishes (unless ``keep_inputs``): see :func:`drop_input`.
- A protected file (and whatever else the task wrote next to it) is deleted ``output_retention_hours``
  after completion; its task stays, marked ``expired_at``, and downloads answer 410.
- A finished task leaves ``tasks.json`` ``task_retention_days`` after it ended, so the store stays small.
A background thread sweeps every ``cleanup_interval_s``.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

from media_cleaner.config import Settings
from media_cleaner.service.tasks import Task, TaskStatus, utc_now
from media_cleaner.service.store.base import TaskNotFound, TaskStore
from media_cleaner.service.storage import MediaStorage, configured_media

log = logging.getLogger("media_cleaner.queue")


def drop_input(settings: Settings, media: MediaStorage, task: Task) -> None:
    """Delete a finished task's upload (called when a task finishes)."""
    if not settings.keep_inputs and task.input_video:
        media.delete(task.input_video)


def delete_task_media(media: MediaStorage, task: Task) -> None:
    """The task's upload and everything named after it among the outputs (video, report sheet)."""
    for key in media.task_keys(task):
        media.delete(key)


def sweep(settings: Settings, store: TaskStore, now: datetime | None = None,
          media: MediaStorage | None = None) -> dict[str, int]:
    """One pass; returns how many outputs expired and how many tasks were pruned."""
    now = now or datetime.now(timezone.utc)
    media = media or configured_media(settings)
    output_deadline = now - timedelta(hours=settings.output_retention_hours)
    task_deadline = now - timedelta(days=settings.task_retention_days)
    expired = pruned = 0
    for task in store.list(limit=10 ** 9)[0]:
        if not task.status.finished or task.completed_at is None:
            continue
        ended = datetime.fromisoformat(task.completed_at)
        try:
            if ended < task_deadline:
                store.delete(task.task_id)
                delete_task_media(media, task)
                pruned += 1
            elif ended < output_deadline and task.status == TaskStatus.completed and task.expired_at is None:
                delete_task_media(media, task)
                store.update(task.task_id, expired_at=utc_now())
                expired += 1
        except TaskNotFound:   # deleted by a user meanwhile
            continue
    if expired or pruned:
        log.info("retention: %d outputs expired, %d old tasks pruned", expired, pruned)
    return {"expired": expired, "pruned": pruned}


class Janitor:
    """Runs :func:`sweep` now and then, in a daemon thread."""

    def __init__(self, settings: Settings, store: TaskStore, media: MediaStorage):
        self.settings, self.store, self.media = settings, store, media
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                sweep(self.settings, self.store, media=self.media)
            except Exception:
                log.exception("retention sweep failed")
            if self._stop.wait(self.settings.cleanup_interval_s):
                return
