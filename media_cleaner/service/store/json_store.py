"""The JSON task store (``queue_db/tasks.json``): the single source of truth for every task.

- One lock guards it inside the process; every change is written before the caller acts on it.
- Writes are atomic (temp file, fsync, rename, fsync of the folder): a crash at any instant leaves the old
  or the new file, never a torn one.
- Progress updates are kept in memory at once but written at most once per ``progress_interval_s`` per
  task, so a busy worker does not rewrite the file for every frame.
- An exclusive ``flock`` on ``queue_db/server.lock`` keeps a second server off the same data folder; the
  kernel drops it when the process dies, even by ``kill -9``.
"""
from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import threading
import time
from collections import Counter
from enum import Enum
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Iterable

from media_cleaner.service.store.base import MAX_SERVER_CRASHES, StoreError, TaskNotFound, TaskStore
from media_cleaner.service.tasks import Task, TaskStatus, claimed_fields

__all__ = ["JsonTaskStore", "StoreError", "TaskNotFound", "MAX_SERVER_CRASHES"]

log = logging.getLogger("media_cleaner.queue")

STORE_FORMAT = 1


class JsonTaskStore(TaskStore):
    """The embedded store: every task in memory, the whole set in one JSON file, rewritten atomically (temp
    file, fsync, rename) after every change under one lock; a lock file keeps a second server off the folder."""

    def __init__(self, path: Path, *, progress_interval_s: float = 1.0):
        self.path = Path(path)
        self.progress_interval_s = progress_interval_s
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        # Each task's JSON, kept up to date with the task: a write joins these instead of re-encoding every
        # task (at 10 000 tasks re-encoding all of them took seconds per write).
        self._encoded: dict[str, str] = {}
        self._last_progress_write: dict[str, float] = {}
        self._lock_file = None
        self._finished_listeners: list[Callable[[Task], None]] = []
        # counts() by status, kept until the next change: GET /stats asks often, and at 10 000 tasks counting
        # took 2 ms of the event loop per request. _changes goes up after every change is in place (see counts).
        self._changes = 0
        self._counts: tuple[int, dict[str, int]] | None = None

    # ----------------------------------------------------------------- opening and closing
    def open(self) -> None:
        """Take the data folder's lock, remove stale temp files and load ``tasks.json`` as it is."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_folder_lock()
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)   # a crash between temp write and rename; the real file is intact
        self._tasks = self._load()
        self._encoded = {task_id: _encode(task) for task_id, task in self._tasks.items()}
        self._changes += 1

    def close(self) -> None:
        with self._lock:
            if self._lock_file is not None:
                self._write()   # progress still only in memory
                self._lock_file.close()
                self._lock_file = None

    def _acquire_folder_lock(self) -> None:
        lock_path = self.path.parent / "server.lock"
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(
                f"Another Media Cleaner server (pid {holder}) is already using the data folder "
                f"{self.path.parent.parent}. Stop it first, or start this one with a different --data-dir.")
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _load(self) -> dict[str, Task]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8") or "[]")
        except (OSError, ValueError) as exc:
            # Never overwrite a file we cannot read: it may be someone's only record of their tasks.
            raise StoreError(f"{self.path} is not valid JSON ({exc}). Restore it from a backup "
                             f"or move it aside, then start the server again.") from exc
        # Accept the shapes a backup may have: {"tasks": [...]}, [...], or {task_id: task}.
        records: Iterable[Any]
        if isinstance(raw, dict) and "tasks" in raw:
            raw = raw["tasks"]
        records = raw.values() if isinstance(raw, dict) else raw
        tasks: dict[str, Task] = {}
        try:
            for record in records:
                task = Task.model_validate(record)
                tasks[task.task_id] = task
        except Exception as exc:
            raise StoreError(f"{self.path} holds a task record that cannot be read ({exc}). "
                             f"Restore the file from a backup, then start the server again.") from exc
        return tasks

    # ----------------------------------------------------------------- writing
    def _commit(self, task_id: str, new: Task | None) -> None:
        """Put ``new`` in place of the task (None deletes it) and write; on a failed write memory is rolled
        back, so what the process believes always matches what a restart would read. Caller holds the lock."""
        old = self._tasks.get(task_id)
        if new is None:
            self._tasks.pop(task_id, None)
            self._encoded.pop(task_id, None)
        else:
            self._tasks[task_id] = new
            self._encoded[task_id] = _encode(new)
        try:
            self._write()
        except BaseException:
            if old is None:
                self._tasks.pop(task_id, None)
                self._encoded.pop(task_id, None)
            else:
                if new is None:   # put it back (at the end: the order differs only until a restart)
                    self._tasks = {**self._tasks, task_id: old}
                self._tasks[task_id] = old
                self._encoded[task_id] = _encode(old)
            raise
        finally:
            self._changes += 1

    def _write(self) -> None:
        """Write every task atomically. Caller holds the lock."""
        payload = ('{"format":%d,"tasks":[' % STORE_FORMAT
                   + ",".join(self._encoded[task_id] for task_id in self._tasks) + "]}")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)   # make the rename itself durable
        finally:
            os.close(dir_fd)
        now = time.monotonic()
        for task_id in self._last_progress_write:
            self._last_progress_write[task_id] = now

    # ----------------------------------------------------------------- queries
    # Readers take no lock, so a status request never waits for a writer's fsync: a change replaces the
    # Task object (copy on write), and list(dict.values()) is one atomic step under CPython's GIL.
    def _snapshot(self) -> list[Task]:
        return list(self._tasks.values())

    def get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return _copy(task)

    def list(self, *, user_id: str | None = None, status: TaskStatus | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[Task], int]:
        """Newest first, filtered, then paged. Returns (page, total matching)."""
        matching = [t for t in reversed(self._snapshot())
                    if (user_id is None or t.user_id == user_id) and (status is None or t.status == status)]
        return [_copy(t) for t in matching[offset:offset + limit]], len(matching)

    def counts(self) -> dict[str, int]:
        """Tasks per status, and in all. Counted again only after a change (GET /stats runs this on the event
        loop). A change bumps ``_changes`` after it is in place, so counts cached under a number were taken
        at or after that change: never older than the number says."""
        changes, cached = self._changes, self._counts
        if cached is None or cached[0] != changes:
            # Counter over the statuses themselves (str hashing, in C): 5× faster than reading each task's
            # ``status.value`` (an Enum property).
            tally = Counter(map(attrgetter("status"), self._snapshot()))
            counts = {s.value: tally.get(s, 0) for s in TaskStatus}
            counts["total"] = sum(counts.values())
            cached = self._counts = (changes, counts)
        return dict(cached[1])

    def queue_position(self, task_id: str) -> int | None:
        """1 + the pending tasks uploaded before this one (they start first: FIFO); None when not pending.
        Lock-free, like the other reads: one pass over the in-memory snapshot."""
        position = 0
        for task in self._snapshot():   # upload order
            if task.status == TaskStatus.pending:
                position += 1
                if task.task_id == task_id:
                    return position
        return None

    def count_pending(self, user_id: str | None = None) -> int:
        return sum(1 for t in self._snapshot()
                   if t.status == TaskStatus.pending and (user_id is None or t.user_id == user_id))

    def ids(self) -> set[str]:
        return {t.task_id for t in self._snapshot()}

    # ----------------------------------------------------------------- changes (each persisted)
    def add(self, task: Task) -> Task:
        with self._lock:
            if task.task_id in self._tasks:
                raise ValueError(f"task {task.task_id} already exists")
            self._commit(task.task_id, task.model_copy(deep=True))
        log.info("task %s created (%s)", task.task_id, task.original_filename)
        return task

    def update(self, task_id: str, **fields: Any) -> Task:
        with self._lock:
            old_status = self._require(task_id).status
            task = self._require(task_id).model_copy(update=fields, deep=True)
            self._commit(task_id, task)
            if task.status != old_status:
                log.info("task %s %s -> %s%s", task_id, old_status.value, task.status.value,
                         f": {task.error_message}" if task.error_message and task.status == TaskStatus.failed else "")
                if task.status.finished:
                    for listener in self._finished_listeners:
                        listener(task.model_copy(deep=True))
            return task.model_copy(deep=True)

    def on_finished(self, listener: Callable[[Task], None]) -> None:
        """Call ``listener(task)`` whenever a task reaches completed, failed or cancelled (after it is
        persisted, with the store's lock held: the listener must be quick and must not block)."""
        self._finished_listeners.append(listener)

    def transition(self, task_id: str, expected: Iterable[TaskStatus], *, attempt: int | None = None,
                   **fields: Any) -> Task | None:
        """Apply ``fields`` only if the task is still in one of ``expected`` states (compare-and-set).

        Returns the updated task, or None when another thread changed its state first (e.g. a cancel).
        """
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status not in tuple(expected) or attempt not in (None, task.attempts):
                return None
            return self.update(task_id, **fields)

    def update_progress(self, task_id: str, progress: float, eta_s: float | None) -> None:
        """Progress is visible at once; it reaches the disk at most once per interval per task."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status != TaskStatus.processing:
                return
            task.progress = round(max(task.progress, min(100.0, progress)), 2)
            task.eta_s = None if eta_s is None else round(max(0.0, eta_s), 1)
            now = time.monotonic()
            if now - self._last_progress_write.get(task_id, 0.0) >= self.progress_interval_s:
                self._last_progress_write[task_id] = now
                self._encoded[task_id] = _encode(task)
                self._write()

    def claim_next(self) -> Task | None:
        """Move the oldest pending task to processing (FIFO) and return it, or None if none waits."""
        with self._lock:
            for task in self._tasks.values():   # insertion order == upload order
                if task.status == TaskStatus.pending:
                    return self.claim(task.task_id)
            return None

    def claim(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status != TaskStatus.pending:
                return None
            self._last_progress_write[task_id] = time.monotonic()
            return self.update(task_id, **claimed_fields(task))

    def delete(self, task_id: str) -> Task:
        with self._lock:
            task = self._require(task_id)
            self._commit(task_id, None)
            self._last_progress_write.pop(task_id, None)
        log.info("task %s deleted", task_id)
        return task

    def _require(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None


_IMMUTABLE = (str, int, float, type(None), Enum)   # bool is an int


def _copy(task: Task) -> Task:
    """The same as ``task.model_copy(deep=True)`` (nothing mutable is shared with ``task``), about 3× faster:
    only the values that can change in place (``media``, ``report``, unknown extra fields) go through
    ``copy.deepcopy``, not every string and number. The API's status and list reads spent a quarter of their
    time in ``deepcopy``."""
    new = task.__copy__()   # shallow: its own __dict__, __pydantic_extra__ and fields-set
    for fields in (new.__dict__, new.__pydantic_extra__ or {}):
        for name, value in list(fields.items()):
            if not isinstance(value, _IMMUTABLE):
                fields[name] = copy.deepcopy(value)
    return new


def _encode(task: Task) -> str:
    return json.dumps(task.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
