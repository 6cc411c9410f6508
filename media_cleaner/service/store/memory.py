"""A task store that keeps everything in the process's memory: nothing survives a restart.

It exists to show (and test) that :class:`~.base.TaskStore` is the whole contract the service relies on: the
tests run the store checks against it as well as against the JSON store, and start a service on it. It is
not offered to operators (a crash would lose every task). A Redis or PostgreSQL store is the same methods
over a shared database.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from media_cleaner.service.store.base import TaskNotFound, TaskStore
from media_cleaner.service.tasks import Task, TaskStatus, claimed_fields


class MemoryTaskStore(TaskStore):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}   # insertion order is upload order
        self._listeners: list[Callable[[Task], None]] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    # Reads copy a snapshot (one atomic list() under the GIL) and take no lock, like the JSON store's.
    def get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task.model_copy(deep=True)

    def list(self, *, user_id: str | None = None, status: TaskStatus | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[Task], int]:
        matching = [t for t in reversed(list(self._tasks.values()))
                    if (user_id is None or t.user_id == user_id) and (status is None or t.status == status)]
        return [t.model_copy(deep=True) for t in matching[offset:offset + limit]], len(matching)

    def counts(self) -> dict[str, int]:
        statuses = [t.status for t in list(self._tasks.values())]
        counts = {s.value: statuses.count(s) for s in TaskStatus}
        return counts | {"total": len(statuses)}

    def queue_position(self, task_id: str) -> int | None:
        pending = [t.task_id for t in list(self._tasks.values()) if t.status == TaskStatus.pending]
        return pending.index(task_id) + 1 if task_id in pending else None

    def count_pending(self, user_id: str | None = None) -> int:
        return sum(1 for t in list(self._tasks.values())
                   if t.status == TaskStatus.pending and (user_id is None or t.user_id == user_id))

    def ids(self) -> set[str]:
        return set(self._tasks)

    def add(self, task: Task) -> Task:
        with self._lock:
            if task.task_id in self._tasks:
                raise ValueError(f"task {task.task_id} already exists")
            self._tasks[task.task_id] = task.model_copy(deep=True)
        return task

    def update(self, task_id: str, **fields: Any) -> Task:
        with self._lock:
            old = self._require(task_id)
            task = old.model_copy(update=fields, deep=True)
            self._tasks[task_id] = task   # a new object: readers holding the old one are unaffected
            if task.status != old.status and task.status.finished:
                for listener in self._listeners:
                    listener(task.model_copy(deep=True))
            return task.model_copy(deep=True)

    def transition(self, task_id: str, expected: Iterable[TaskStatus], *, attempt: int | None = None,
                   **fields: Any) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status not in tuple(expected) or attempt not in (None, task.attempts):
                return None
            return self.update(task_id, **fields)

    def update_progress(self, task_id: str, progress: float, eta_s: float | None) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and task.status == TaskStatus.processing:
                self._tasks[task_id] = task.model_copy(update={
                    "progress": round(max(task.progress, min(100.0, progress)), 2),
                    "eta_s": None if eta_s is None else round(max(0.0, eta_s), 1)})

    def claim_next(self) -> Task | None:
        with self._lock:
            for task in self._tasks.values():
                if task.status == TaskStatus.pending:
                    return self.claim(task.task_id)
            return None

    def claim(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status != TaskStatus.pending:
                return None
            return self.update(task_id, **claimed_fields(task))

    def delete(self, task_id: str) -> Task:
        with self._lock:
            task = self._require(task_id)
            del self._tasks[task_id]
            return task

    def on_finished(self, listener: Callable[[Task], None]) -> None:
        self._listeners.append(listener)

    def _require(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None
