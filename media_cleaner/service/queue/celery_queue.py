"""The distributed queue (``MEDIA_CLEANER_BACKEND=celery``): the API sends each task to Celery, and Celery
workers on any number of machines (``python -m media_cleaner worker``, :mod:`.celery_worker`) run them.

The task record stays in the shared Redis store, the one truth about a task; a Celery message carries only
the task's id. So a message delivered twice, late or after the task was cancelled changes nothing: the
worker claims the task with a compare-and-set (pending -> processing) and drops the message when the claim
fails. Celery's settings for "never lost" (:func:`make_celery`):

- ``task_acks_late``: a message is acknowledged when the task has run, not when it was received, so a worker
  killed mid-task leaves it unacknowledged and the broker gives it out again;
- ``task_reject_on_worker_lost``: the same when a worker's pool child dies;
- ``visibility_timeout`` (``MEDIA_CLEANER_VISIBILITY_TIMEOUT_S``, default 24 h): how long Redis waits for the
  acknowledgement before it redelivers. It must be longer than the longest task, or a long task is given to a
  second worker while the first still runs (the claim would refuse it, but the message would come back again
  and again). Because it is that long, the task leases (:mod:`.leases`) bring a dead worker's task back in
  seconds instead;
- ``worker_prefetch_multiplier = 1``: a worker reserves only what it can start, so tasks are not held
  hostage by a busy worker while another is idle.

Only a Redis broker is supported: the queue depth in ``/health`` is the length of its list.
"""
from __future__ import annotations

import logging
import threading
import time

from media_cleaner.config import Settings
from media_cleaner.service.queue.base import TaskQueue
from media_cleaner.service.queue.leases import WorkerRegistry
from media_cleaner.service.store.base import StoreUnavailable

log = logging.getLogger("media_cleaner.queue")

PROTECT_TASK = "media_cleaner.protect"
HEALTH_REFRESH_S = 1.0   # how often the API reads the workers' heartbeats and the queue's depth


def make_celery(settings: Settings):
    """The Celery application both sides use: the API sends with it, the workers consume with it."""
    from celery import Celery

    app = Celery("media_cleaner", broker=settings.celery_broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,              # the result is in the task store
        worker_prefetch_multiplier=1,
        task_serializer="json", accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # A task keeps running while the broker is away (it writes to the store, not the broker); its
        # acknowledgement is lost then, and the late redelivery is dropped by the claim.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    return app


def send_task(app, settings: Settings, task_id: str) -> bool:
    """Queue one message for ``task_id``; False (logged) when the broker cannot take it now: the workers'
    sweeper sends it again once the broker is back, so an accepted task is never lost."""
    try:
        app.send_task(PROTECT_TASK, args=[task_id], queue=settings.queue_name)
        return True
    except Exception as exc:   # kombu's OperationalError and socket errors: the broker is unreachable
        log.warning("task %s could not be sent to the queue now (%s); a worker will pick it up later",
                    task_id, exc)
        return False


def queue_depth(client, settings: Settings) -> int:
    """Messages waiting in the broker's list (kombu's Redis transport keeps the queue under its name)."""
    return int(client.llen(settings.queue_name))


class CeleryQueue(TaskQueue):
    """The API's side: send, and report what the workers say of themselves."""

    isolated = True      # the engines run on the workers, never in the API
    distributed = True   # the workers' leases, not this server's start-up, recover tasks

    def __init__(self, settings: Settings, store):
        import redis
        self.settings = settings
        self.store = store
        self.app = make_celery(settings)
        self._broker = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=2,
                                            socket_connect_timeout=2, decode_responses=True)
        self._workers = WorkerRegistry(store.client, settings.redis_prefix)
        self._state: dict = {"broker": "not checked yet", "workers": [], "queue_depth": None}
        self._stopping = threading.Event()

    # What the workers said in their heartbeats, read by a background thread once a second, so that /health
    # and /stats answer from memory even while Redis is slow or away.
    def _read_state(self) -> dict:
        state = {"broker": "ok", "workers": [], "queue_depth": None}
        try:
            state["queue_depth"] = queue_depth(self._broker, self.settings)
        except Exception as exc:
            state["broker"] = f"unreachable ({type(exc).__name__})"
        try:
            state["workers"] = self._workers.alive()
        except Exception as exc:
            state["store"] = f"unreachable ({type(exc).__name__})"
        return state

    def _refresh(self) -> None:
        while not self._stopping.wait(HEALTH_REFRESH_S):
            self._state = self._read_state()

    @property
    def size(self) -> int:
        return sum(worker.get("slots", 0) for worker in self._state["workers"])

    def start(self) -> None:
        self._state = self._read_state()
        threading.Thread(target=self._refresh, name="celery-health", daemon=True).start()
        log.info("distributed queue %r on %s: broker %s, %d worker(s) alive", self.settings.queue_name,
                 self.settings.celery_broker_url.split("@")[-1], self._state["broker"],
                 len(self._state["workers"]))

    def notify(self, task_id: str) -> None:
        send_task(self.app, self.settings, task_id)

    def busy(self) -> int:
        """Runs in the workers now, from their heartbeats, read fresh (a worker beats at once when a run starts
        or ends, its clean-up done): a cancelled task counts until its worker has stopped it."""
        try:
            workers = self._workers.alive()
        except Exception:   # Redis away: the last figures
            workers = self._state["workers"]
        return sum(worker.get("busy", 0) for worker in workers)

    def stalled(self) -> int:
        return sum(worker.get("stalled", 0) for worker in self._state["workers"])

    def cancel(self, task_id: str) -> bool:
        """The cancel is already in the store; the worker running the task sees it within half a second (it
        watches its tasks' records) and stops it."""
        try:
            return self.store.get(task_id).status.value == "cancelled"
        except (KeyError, StoreUnavailable):
            return False

    def health(self) -> dict:
        state = self._state
        now = time.time()
        return {"backend": "celery", "broker": state["broker"], "queue_depth": state["queue_depth"],
                "workers_alive": len(state["workers"]),
                "workers": [{"name": w["name"], "slots": w.get("slots"), "busy": w.get("busy"),
                             "stalled": w.get("stalled"), "completed": w.get("completed"),
                             "seen_s_ago": round(now - w["seen"], 1)} for w in state["workers"]],
                **({"store": state["store"]} if "store" in state else {})}

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self.app.close()
        self._broker.close()
