"""What the service needs from whatever runs its tasks: the :class:`TaskQueue` protocol.

Today's queue is a pool of worker threads in the server, each running its jobs in an engine process of its
own (:class:`~.threads.WorkerPool`), which claims tasks from the store; the distributed one sends them to
Celery workers on other machines (:class:`~.celery_queue.CeleryQueue`). Both run a task the same way
(:class:`~.runner.TaskRunner`).
"""
from __future__ import annotations

from typing import Protocol


class TaskQueue(Protocol):
    #: True when a crash of a task cannot take the server down with it (the engines run in other processes):
    #: then a server crash is not charged to the interrupted task (see ``TaskStore.recover``).
    isolated: bool
    #: True when workers in other processes or machines own the running tasks (the distributed queue): then the
    #: server's start-up neither puts back tasks left in processing nor removes files in progress; the workers'
    #: leases find tasks whose worker is gone.
    distributed: bool

    @property
    def size(self) -> int:
        """How many tasks can run at once."""

    def start(self) -> None:
        """Start taking pending tasks from the store (and warm the engines up where they will run)."""

    def notify(self, task_id: str) -> None:
        """``task_id`` was queued (it is in the store): start it soon if a worker is free."""

    def busy(self) -> int:
        """Tasks running now. Called on the event loop: must not block."""

    def stalled(self) -> int:
        """Running tasks that made no progress for the stall timeout (``/health`` says "degraded")."""

    def cancel(self, task_id: str) -> bool:
        """Stop the task if it runs here (within about a second; its partial output removed); False otherwise."""

    def health(self) -> dict:
        """What ``/health`` and ``/stats`` show of the queue beyond the counts (broker, workers alive, depth)."""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking tasks, interrupt the running ones (they are recovered at the next start) and wait."""
