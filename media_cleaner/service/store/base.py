"""What the service needs from a task store: the :class:`TaskStore` protocol.

Today's store is the JSON file (:class:`~.json_store.JsonTaskStore`); :class:`~.memory.MemoryTaskStore` is a
second implementation the tests run the same checks against. A shared store for several machines (Redis,
PostgreSQL) is one more module implementing these methods, chosen in :mod:`media_cleaner.service.core`.

The contract, beyond the signatures:

- every change is durable before the method returns (the caller acts on it next: deletes a file, answers);
- reads (:meth:`get`, :meth:`list`, :meth:`counts`, :meth:`queue_position`) never wait for a writer: the
  async routes call them on the event loop;
- :meth:`transition`, :meth:`claim` and :meth:`claim_next` are atomic compare-and-set: of two callers, one wins;
- the listeners given to :meth:`on_finished` run once for each task that reaches a finished state.

:meth:`TaskStore.recover` is written once, here, from the other methods: the crash policy is the same
whatever holds the tasks. Implementations subclass :class:`TaskStore` to inherit it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from media_cleaner.service.tasks import Task, TaskStatus, utc_now


class StoreError(RuntimeError):
    """The store cannot be opened; the message says what to do."""


class StoreUnavailable(StoreError):
    """The store cannot be reached just now (a shared store's server is down or restarting): try again."""


class TaskNotFound(KeyError):
    pass


# A task whose runs the server's crashes interrupted this many times fails (see TaskStore.recover).
MAX_SERVER_CRASHES = 10


class TaskStore(Protocol):
    def open(self) -> None:
        """Load (or create) the store; refuse one that another server holds, or that cannot be read."""

    def close(self) -> None:
        """Write what is pending and release the store."""

    # -- reads: never block -------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """A copy of the task; :class:`TaskNotFound` when there is none."""

    def list(self, *, user_id: str | None = None, status: TaskStatus | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[Task], int]:
        """Newest first, filtered, then paged: (page, total matching)."""

    def counts(self) -> dict[str, int]:
        """Tasks per status, and ``total``."""

    def queue_position(self, task_id: str) -> int | None:
        """1 for the next pending task to start; None when the task is not pending."""

    def count_pending(self, user_id: str | None = None) -> int:
        """Pending tasks, of one owner or of all."""

    def ids(self) -> set[str]:
        """Every task id."""

    # -- writes: durable when they return -------------------------------------------------------------------

    def add(self, task: Task) -> Task:
        """Record a new task."""

    def update(self, task_id: str, **fields: Any) -> Task:
        """Change fields of a task; the task as it now is."""

    def transition(self, task_id: str, expected: Iterable[TaskStatus], *, attempt: int | None = None,
                   **fields: Any) -> Task | None:
        """Change the task only if its status is one of ``expected`` and, with ``attempt``, its ``attempts`` is
        that number (atomically); None when it was not. ``attempt`` fences a run: a worker that lost its task
        to another (the task was taken back and claimed again) can no longer change it."""

    def update_progress(self, task_id: str, progress: float, eta_s: float | None) -> None:
        """Progress of a running task; it never goes back. A store may write it at most once per its progress
        interval (the JSON store's readers still see every report; a shared store's see it within the interval)."""

    def claim_next(self) -> Task | None:
        """The oldest pending task, moved to processing with one more attempt (FIFO); None when none waits."""

    def claim(self, task_id: str) -> Task | None:
        """That task, moved from pending to processing with one more attempt; None when it is not pending (a
        distributed queue delivers a task by its id)."""

    def delete(self, task_id: str) -> Task:
        """Remove the task record; the task as it was."""

    def on_finished(self, listener: Callable[[Task], None]) -> None:
        """Call ``listener`` (quick work only) whenever a task completes, fails or is cancelled."""

    def recover(self, max_attempts: int, charge_crashes: bool = True,
                max_server_crashes: int = MAX_SERVER_CRASHES) -> list[Task]:
        """At start-up: tasks a crash left in ``processing`` go back to pending, or fail.

        How a crash of the server is counted: with ``charge_crashes`` (the engines ran inside the server, so
        the task itself may have crashed it) the interrupted run counts as one of ``max_attempts``, the guard
        against a poison task. Without it (each task ran in an engine process of its own, whose crash fails
        only that task and never the server) the attempt is given back and only ``server_crashes`` grows: the
        task fails after ``max_server_crashes`` such restarts, a guard that innocent tasks do not reach."""
        changed = []
        # Nothing else runs at start-up, so read-then-update needs no lock of its own.
        for task in reversed(self.list(status=TaskStatus.processing, limit=10 ** 9)[0]):   # oldest first
            if not charge_crashes:
                crashes = task.server_crashes + 1
                if crashes >= max_server_crashes:
                    changed.append(self.update(
                        task.task_id, status=TaskStatus.failed, completed_at=utc_now(), eta_s=None,
                        server_crashes=crashes,
                        error_message=(f"The server stopped unexpectedly {crashes} times while working on "
                                       f"this video, so it was given up. Upload it again; if it happens "
                                       f"again, tell the server's operator.")))
                else:
                    changed.append(self.update(task.task_id, status=TaskStatus.pending, progress=0.0,
                                               eta_s=None, started_at=None, server_crashes=crashes,
                                               attempts=max(0, task.attempts - 1)))
                continue
            if task.attempts >= max_attempts:
                changed.append(self.update(
                    task.task_id, status=TaskStatus.failed, completed_at=utc_now(), eta_s=None,
                    error_message=(f"Processing was interrupted {task.attempts} times (the server stopped "
                                   f"or crashed while working on it), so it was given up. Upload the "
                                   f"video again; if it keeps failing, try a shorter clip.")))
            else:
                changed.append(self.update(task.task_id, status=TaskStatus.pending, progress=0.0,
                                           eta_s=None, started_at=None))
        return changed
