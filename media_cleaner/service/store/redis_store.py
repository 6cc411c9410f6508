"""A task store in Redis, shared by every API and worker machine (``MEDIA_CLEANER_STORE=redis``).

Why Redis rather than PostgreSQL: it is also the broker of the distributed queue, so a deployment runs one
service instead of two, and with ``appendonly yes`` and ``appendfsync always`` Redis writes every command to
its append-only file and fsyncs it before it answers, so a write the store has returned survives a crash of
the Redis host as a committed PostgreSQL transaction does. :meth:`RedisTaskStore.open` warns when the server
is not configured so.

Layout (every key under ``prefix``, default ``mc:``):

- ``task:<id>``: the task as JSON;
- ``seq``: a counter giving each new task its upload order;
- ``order``: a sorted set of every task id by upload order, and the indexes ``status:<s>``, ``user:<u>`` and
  ``user:<u>:status:<s>``, sorted the same way, so listing a user's tasks in one state, counting, and a
  task's queue position are index reads (``ZREVRANGE``/``ZCARD``/``ZRANK``), never scans.

With the embedded worker threads, one server per store: :meth:`RedisTaskStore.open` takes ``server-lock`` (a key
with a 30 s lease that a background thread renews), and a second server on the same Redis and prefix stops at
start-up, as on the same data folder, because start-up recovery puts back every task a crash left in
processing, which is only right while no other server is processing. With the distributed queue
(``shared=True``) many API and worker processes open the store at once and take no lock: each running task has
a lease of its own instead (:mod:`media_cleaner.service.queue.celery_queue`).

Every change is a compare-and-set (``WATCH`` the task's key, read, ``MULTI`` … ``EXEC``, retried when another
client changed it in between): of two machines cancelling and claiming the same task, one wins. A status
read is one ``GET``. While Redis cannot be reached (down, restarting) every method raises
:class:`~.base.StoreUnavailable`; the API answers 503 and the workers wait for it to come back.
"""
from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from media_cleaner.service.store.base import StoreError, StoreUnavailable, TaskNotFound, TaskStore
from media_cleaner.service.tasks import Task, TaskStatus, claimed_fields

log = logging.getLogger("media_cleaner.queue")

# Compare-and-set attempts before a write gives up (another client kept changing the same task).
MAX_RETRIES = 50
# The server lock's lease, and how often it is renewed: a server killed with -9 frees the store this long after.
LOCK_LEASE_S = 30
LOCK_RENEW_S = 10


def _reachable(method):
    """Redis's connection errors as StoreUnavailable, which callers handle without knowing Redis."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except self._redis_errors as exc:
            raise StoreUnavailable(f"The task store's Redis at {self._safe_url()} cannot be reached ({exc}).") \
                from exc
    return wrapper


class RedisTaskStore(TaskStore):
    def __init__(self, url: str, *, prefix: str = "mc:", progress_interval_s: float = 1.0, shared: bool = False,
                 client=None):
        import redis
        self._redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.shared = shared   # opened by many processes at once (the distributed queue): no server lock
        self._watch_error = redis.exceptions.WatchError
        self.url, self.prefix = url, prefix
        self._redis = client or redis.Redis.from_url(url, decode_responses=True, socket_timeout=10,
                                                     socket_connect_timeout=5, health_check_interval=30)
        self._listeners: list[Callable[[Task], None]] = []
        self._lock_token: str | None = None
        self._lock_stop = None
        # Progress reaches Redis at most once per interval per task (a worker reports it for every frame).
        self.progress_interval_s = progress_interval_s
        self._last_progress_write: dict[str, float] = {}

    # ----------------------------------------------------------------- keys
    def _task_key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def _indexes(self, task: Task) -> list[str]:
        """The sorted sets a task belongs to."""
        status = task.status.value
        keys = [f"{self.prefix}order", f"{self.prefix}status:{status}"]
        if task.user_id is not None:
            keys += [f"{self.prefix}user:{task.user_id}", f"{self.prefix}user:{task.user_id}:status:{status}"]
        return keys

    def _index_key(self, user_id: str | None, status: TaskStatus | None) -> str:
        if user_id is not None and status is not None:
            return f"{self.prefix}user:{user_id}:status:{status.value}"
        if user_id is not None:
            return f"{self.prefix}user:{user_id}"
        if status is not None:
            return f"{self.prefix}status:{status.value}"
        return f"{self.prefix}order"

    # ----------------------------------------------------------------- opening and closing
    def open(self) -> None:
        try:
            self._redis.ping()
            config = self._redis.config_get("append*")
        except self._redis_errors as exc:
            raise StoreError(f"The task store's Redis at {self._safe_url()} cannot be reached ({exc}). Start it, "
                             f"or correct MEDIA_CLEANER_REDIS_URL.") from exc
        except Exception:   # CONFIG may be disabled on a managed Redis: then its operator answers for it
            config = {}
        if config and (config.get("appendonly") != "yes" or config.get("appendfsync") != "always"):
            log.warning("Redis at %s runs with appendonly=%s, appendfsync=%s: a crash of the Redis host can lose "
                        "the last task changes. Set appendonly yes and appendfsync always.", self._safe_url(),
                        config.get("appendonly"), config.get("appendfsync"))
        if not self.shared:
            self._take_lock()

    def _take_lock(self) -> None:
        token = f"{os.getpid()}:{secrets.token_hex(8)}"
        key = f"{self.prefix}server-lock"
        if not self._redis.set(key, token, nx=True, ex=LOCK_LEASE_S):
            raise StoreError(f"Another Media Cleaner server ({self._redis.get(key)}) is already using the task store "
                             f"at {self._safe_url()} (prefix {self.prefix!r}). Stop it first, or give this one "
                             f"another MEDIA_CLEANER_REDIS_PREFIX.")
        self._lock_token, self._lock_stop = token, threading.Event()

        def renew(stop=self._lock_stop):
            while not stop.wait(LOCK_RENEW_S):
                try:
                    if self._redis.get(key) == token:
                        self._redis.expire(key, LOCK_LEASE_S)
                    else:
                        log.error("the task store's server lock at %s was lost", self._safe_url())
                except self._redis_errors as exc:
                    log.warning("renewing the task store's server lock failed: %s", exc)
        threading.Thread(target=renew, name="redis-store-lock", daemon=True).start()

    def close(self) -> None:
        if self._lock_stop is not None:
            self._lock_stop.set()
            key = f"{self.prefix}server-lock"
            try:
                if self._redis.get(key) == self._lock_token:
                    self._redis.delete(key)
            except self._redis_errors:
                pass   # the lease runs out by itself
            self._lock_stop = self._lock_token = None
        self._redis.close()

    def _safe_url(self) -> str:
        """The URL without a password (it ends up in logs and errors)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"

    # ----------------------------------------------------------------- reads: one round trip each
    def _load(self, raw: str | None, task_id: str) -> Task:
        if raw is None:
            raise TaskNotFound(task_id)
        return Task.model_validate_json(raw)

    @property
    def client(self):
        """The Redis connection, for what lives beside the tasks (the distributed queue's leases)."""
        return self._redis

    @_reachable
    def get(self, task_id: str) -> Task:
        return self._load(self._redis.get(self._task_key(task_id)), task_id)

    @_reachable
    def list(self, *, user_id: str | None = None, status: TaskStatus | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[Task], int]:
        key = self._index_key(user_id, status)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrange(key, offset, offset + limit - 1)
        pipe.zcard(key)
        ids, total = pipe.execute()
        raws = self._redis.mget([self._task_key(i) for i in ids]) if ids else []
        return [Task.model_validate_json(raw) for raw in raws if raw is not None], total

    @_reachable
    def counts(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for status in TaskStatus:
            pipe.zcard(f"{self.prefix}status:{status.value}")
        values = pipe.execute()
        counts = {status.value: value for status, value in zip(TaskStatus, values)}
        return counts | {"total": sum(values)}

    @_reachable
    def queue_position(self, task_id: str) -> int | None:
        rank = self._redis.zrank(f"{self.prefix}status:pending", task_id)
        return None if rank is None else rank + 1

    @_reachable
    def count_pending(self, user_id: str | None = None) -> int:
        return self._redis.zcard(self._index_key(user_id, TaskStatus.pending))

    @_reachable
    def ids(self) -> set[str]:
        return set(self._redis.zrange(f"{self.prefix}order", 0, -1))

    # ----------------------------------------------------------------- writes: compare-and-set
    def _change(self, task_id: str, decide: Callable[[Task], Task | None]) -> tuple[Task | None, Task | None]:
        """Apply ``decide(old) -> new`` (None: leave it) atomically; (old, new). Retried on a conflict."""
        key = self._task_key(task_id)
        for _ in range(MAX_RETRIES):
            with self._redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    old = self._load(pipe.get(key), task_id)
                    new = decide(old)
                    if new is None:
                        pipe.unwatch()
                        return old, None
                    score = pipe.zscore(f"{self.prefix}order", task_id)
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    for index in set(self._indexes(old)) - set(self._indexes(new)):
                        pipe.zrem(index, task_id)
                    for index in self._indexes(new):
                        pipe.zadd(index, {task_id: score})
                    pipe.execute()
                except self._watch_error:
                    continue
            if new.status != old.status and new.status.finished:
                self._last_progress_write.pop(task_id, None)
                for listener in self._listeners:
                    listener(new.model_copy(deep=True))
            return old, new
        raise StoreError(f"task {task_id} kept changing under {MAX_RETRIES} attempts to update it")

    @_reachable
    def add(self, task: Task) -> Task:
        key = self._task_key(task.task_id)
        sequence = self._redis.incr(f"{self.prefix}seq")
        for _ in range(MAX_RETRIES):
            with self._redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        raise ValueError(f"task {task.task_id} already exists")
                    pipe.multi()
                    pipe.set(key, task.model_dump_json())
                    for index in self._indexes(task):
                        pipe.zadd(index, {task.task_id: sequence})
                    pipe.execute()
                except self._watch_error:
                    continue
            log.info("task %s created (%s)", task.task_id, task.original_filename)
            return task
        raise StoreError(f"task {task.task_id} could not be added")

    @_reachable
    def update(self, task_id: str, **fields: Any) -> Task:
        _, new = self._change(task_id, lambda old: old.model_copy(update=fields, deep=True))
        return new

    @_reachable
    def transition(self, task_id: str, expected: Iterable[TaskStatus], *, attempt: int | None = None,
                   **fields: Any) -> Task | None:
        allowed = tuple(expected)
        try:
            _, new = self._change(task_id, lambda old: old.model_copy(update=fields, deep=True)
                                  if old.status in allowed and attempt in (None, old.attempts) else None)
        except TaskNotFound:
            return None
        return new

    @_reachable
    def update_progress(self, task_id: str, progress: float, eta_s: float | None) -> None:
        now = time.monotonic()
        if now - self._last_progress_write.get(task_id, float("-inf")) < self.progress_interval_s and progress < 100:
            return
        self._last_progress_write[task_id] = now

        def decide(old: Task) -> Task | None:
            if old.status != TaskStatus.processing:
                return None
            return old.model_copy(update={"progress": round(max(old.progress, min(100.0, progress)), 2),
                                          "eta_s": None if eta_s is None else round(max(0.0, eta_s), 1)})
        try:
            self._change(task_id, decide)
        except TaskNotFound:
            pass

    @_reachable
    def claim_next(self) -> Task | None:
        pending = f"{self.prefix}status:pending"
        for _ in range(MAX_RETRIES):
            oldest = self._redis.zrange(pending, 0, 0)
            if not oldest:
                return None
            claimed = self.claim(oldest[0])
            if claimed is not None:
                return claimed
        return None

    @_reachable
    def claim(self, task_id: str) -> Task | None:
        try:
            _, claimed = self._change(task_id, lambda old: old.model_copy(update=claimed_fields(old))
                                      if old.status == TaskStatus.pending else None)
        except TaskNotFound:
            return None
        return claimed

    @_reachable
    def delete(self, task_id: str) -> Task:
        key = self._task_key(task_id)
        for _ in range(MAX_RETRIES):
            with self._redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    task = self._load(pipe.get(key), task_id)
                    pipe.multi()
                    pipe.delete(key)
                    for index in self._indexes(task):
                        pipe.zrem(index, task_id)
                    pipe.execute()
                except self._watch_error:
                    continue
            log.info("task %s deleted", task_id)
            return task
        raise StoreError(f"task {task_id} kept changing under {MAX_RETRIES} attempts to delete it")

    def on_finished(self, listener: Callable[[Task], None]) -> None:
        """Listeners hear of the tasks this process finishes (a task finished on another machine reaches the
        API's listeners through the distributed queue, not through the store)."""
        self._listeners.append(listener)
