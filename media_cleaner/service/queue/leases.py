"""What the distributed workers keep in Redis beside the tasks: a lease on each running task, and a heartbeat
of each worker.

A **task lease** (``<prefix>lease:<task id>``, a key with a time to live) says "a live worker runs this task".
The worker takes it *before* it claims the task and renews it while the task runs; when the worker is killed
or its machine is gone the key expires, and any worker's sweeper (:mod:`.celery_worker`) puts the task back in
the queue. Celery's own redelivery (late acknowledgement, a visibility timeout longer than the longest task)
would also bring the task back, but only after that timeout, hours; the lease does it in seconds. Renewing
and releasing compare the owner first (a Lua script, atomic in Redis), so a worker never extends or removes a
lease another worker took over.

A **worker heartbeat** (``<prefix>worker:<name>``, JSON, expiring after three missed beats, and the sorted set
``<prefix>workers``) says what each worker holds: slots, busy, stalled. ``/health`` and ``/stats`` read them.
"""
from __future__ import annotations

import json
import time

# Compare-and-extend and compare-and-delete: only the owner's value may renew or release a lease.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class TaskLeases:
    def __init__(self, client, prefix: str, lease_s: float):
        self._redis, self.prefix, self.lease_s = client, prefix, lease_s
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}lease:{task_id}"

    def take(self, task_id: str, owner: str) -> bool:
        """Take the lease; False when another live worker holds it."""
        return bool(self._redis.set(self._key(task_id), owner, nx=True, px=int(self.lease_s * 1000)))

    def renew(self, task_id: str, owner: str) -> bool:
        """Extend our lease; False when it is no longer ours (it expired, and perhaps another took it)."""
        return bool(self._renew(keys=[self._key(task_id)], args=[owner, int(self.lease_s * 1000)]))

    def release(self, task_id: str, owner: str) -> None:
        self._release(keys=[self._key(task_id)], args=[owner])

    def held(self, task_ids: list[str]) -> set[str]:
        """Which of ``task_ids`` have a live lease."""
        if not task_ids:
            return set()
        values = self._redis.mget([self._key(task_id) for task_id in task_ids])
        return {task_id for task_id, value in zip(task_ids, values) if value is not None}


class WorkerRegistry:
    def __init__(self, client, prefix: str, beat_s: float = 2.0):
        self._redis, self.prefix, self.beat_s = client, prefix, beat_s

    def beat(self, name: str, state: dict) -> None:
        """Say that worker ``name`` is alive, with what it holds; it counts as gone after three missed beats."""
        ttl = int(self.beat_s * 3 * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(f"{self.prefix}worker:{name}", json.dumps(state | {"name": name, "seen": time.time()}), px=ttl)
        pipe.zadd(f"{self.prefix}workers", {name: time.time()})
        pipe.execute()

    def leave(self, name: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(f"{self.prefix}worker:{name}")
        pipe.zrem(f"{self.prefix}workers", name)
        pipe.execute()

    def alive(self) -> list[dict]:
        """The live workers' last heartbeats; workers gone for a day are forgotten."""
        key = f"{self.prefix}workers"
        self._redis.zremrangebyscore(key, "-inf", time.time() - 86400)
        names = self._redis.zrange(key, 0, -1)
        if not names:
            return []
        values = self._redis.mget([f"{self.prefix}worker:{name}" for name in names])
        return [json.loads(value) for value in values if value is not None]
