"""How the Redis task store reads scale: fill it with N tasks (several users, every status), then time the
reads the API makes (status, a user's tasks in one state, counts, queue position) and print medians.

    redis-server --port 6390 --save '' --appendonly yes --appendfsync always --dir /tmp &
    .venv/bin/python -m tools.redis_store_bench --redis redis://127.0.0.1:6390/0 [--tasks 100000]

The tasks are written with the store's own ``add`` (so the indexes are the real ones) under a fresh key
prefix, removed afterwards.
"""
from __future__ import annotations

import argparse
import statistics
import time
import uuid

from media_cleaner.service.store.redis_store import RedisTaskStore
from media_cleaner.service.tasks import Task, TaskStatus


def timed(call, repeat: int = 200) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--redis", required=True, help="the Redis to fill, e.g. redis://127.0.0.1:6390/0")
    args = parser.parse_args()
    store = RedisTaskStore(args.redis, prefix=f"bench{uuid.uuid4().hex[:6]}:")
    statuses = list(TaskStatus)
    started = time.perf_counter()
    for i in range(args.tasks):
        store.add(Task(task_id=f"{i:032x}", original_filename="v.mp4", epsilon=0.12, video_strength=1.0,
                       audio_level="weak", every_n_frames=10, user_id=f"user{i % 50}",
                       status=statuses[i % len(statuses)]))
    print(f"{args.tasks} tasks added in {time.perf_counter() - started:.1f} s")
    middle = f"{args.tasks // 2:032x}"
    print(f"GET /status (get):                      {timed(lambda: store.get(middle)):.3f} ms")
    print(f"a user's completed tasks, page of 50:    "
          f"{timed(lambda: store.list(user_id='user7', status=TaskStatus.completed)):.3f} ms")
    print(f"all tasks, page of 50:                   {timed(lambda: store.list()):.3f} ms")
    print(f"counts:                                  {timed(store.counts):.3f} ms")
    print(f"queue position:                          {timed(lambda: store.queue_position(middle)):.3f} ms")
    keys = store._redis.keys(f"{store.prefix}*")
    for start in range(0, len(keys), 10_000):
        store._redis.delete(*keys[start:start + 10_000])


if __name__ == "__main__":
    main()
