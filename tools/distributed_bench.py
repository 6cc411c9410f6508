"""Throughput of the distributed backend on this machine: tasks per hour with 1 and with 2 worker processes,
and the API's ``GET /status`` latency (median, p99) while they work.

    redis-server --port 6390 --save '' --appendonly yes --appendfsync always --dir /tmp &
    .venv/bin/python -m tools.distributed_bench --redis redis://127.0.0.1:6390/0 --clip talk.mp4 \
        [--tasks 8] [--workers 1 2] [--pin]

For each worker count it starts an API process (``run_server.py``, ``MEDIA_CLEANER_BACKEND=celery``) and that
many ``python -m media_cleaner worker`` processes (one slot each, the real engines, warmed up before the
clock starts) on a fresh data folder and key prefix, uploads ``--tasks`` copies of the clip at once, and
times from the first upload to the last completion. Meanwhile one client polls ``/status`` of a pending task
ten times a second. ``--pin`` gives each worker a core of its own (``taskset``), as a one-core machine each:
then the figures read as "per worker machine of this core". Prints one line per worker count.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(redis_url: str, clip: Path, workers: int, tasks: int, pin: bool, folder: Path) -> dict:
    data = folder / f"data-{workers}"
    env = {**os.environ, "MEDIA_CLEANER_STORE": "redis", "MEDIA_CLEANER_BACKEND": "celery",
           "MEDIA_CLEANER_REDIS_URL": redis_url, "MEDIA_CLEANER_REDIS_PREFIX": f"bench{uuid.uuid4().hex[:6]}:",
           "MEDIA_CLEANER_QUEUE_NAME": f"bench-{uuid.uuid4().hex[:6]}", "MEDIA_CLEANER_DATA_DIR": str(data),
           "MEDIA_CLEANER_MAX_PENDING_TASKS": str(max(100, tasks))}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cores = sorted(os.sched_getaffinity(0))
    processes = []
    with open(folder / f"console-{workers}.txt", "w") as console:
        for i in range(workers):
            command = [sys.executable, "-m", "media_cleaner", "worker", "--concurrency", "1", "--name", f"b{i + 1}"]
            if pin:
                command = ["taskset", "-c", str(cores[i % len(cores)])] + command
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT))
        processes.append(subprocess.Popen([sys.executable, "run_server.py", "--port", str(port)], cwd=ROOT, env=env,
                                          stdout=console, stderr=subprocess.STDOUT))
        try:
            deadline = time.monotonic() + 300
            while True:   # every worker alive, and its engine warmed up (its log says "ready")
                try:
                    health = httpx.get(url + "/health", timeout=2).json()
                    ready = sum(1 for p in data.glob("server_logs/worker-*.log") if "engines ready" in p.read_text())
                    if health["backend"]["workers_alive"] == workers and ready >= workers:
                        break
                except (httpx.HTTPError, KeyError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"the workers did not get ready; see {console.name}")
                time.sleep(0.5)
            started = time.monotonic()
            ids = []
            for _ in range(tasks):
                with open(clip, "rb") as fh:
                    answer = httpx.post(url + "/upload", files={"file": (clip.name, fh, "video/mp4")}, timeout=60)
                answer.raise_for_status()
                ids.append(answer.json()["task_id"])
            latencies: list[float] = []
            stop = threading.Event()

            def poll() -> None:
                with httpx.Client(base_url=url, timeout=10) as client:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        client.get(f"/status/{ids[-1]}")
                        latencies.append(time.perf_counter() - t0)
                        stop.wait(0.1)
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            done = set()
            while len(done) < tasks:
                for task_id in ids:
                    if task_id not in done and httpx.get(f"{url}/status/{task_id}", timeout=10).json()["status"] in (
                            "completed", "failed", "cancelled"):
                        done.add(task_id)
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            stop.set()
            poller.join()
            statuses = [httpx.get(f"{url}/status/{task_id}", timeout=10).json()["status"] for task_id in ids]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    latencies.sort()
    return {"workers": workers, "tasks": tasks, "completed": statuses.count("completed"), "seconds": elapsed,
            "per_hour": 3600 * tasks / elapsed, "status_median_ms": 1000 * statistics.median(latencies),
            "status_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "polls": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, help="a Redis to use, e.g. redis://127.0.0.1:6390/0")
    parser.add_argument("--clip", required=True, type=Path, help="the video every task protects")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pin", action="store_true", help="each worker on a core of its own (taskset)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f}; cores: {len(os.sched_getaffinity(0))}; "
          f"clip: {args.clip.name}; pinned: {args.pin}")
    try:
        for workers in args.workers:
            r = run(args.redis, args.clip, workers, args.tasks, args.pin, folder)
            print(f"{r['workers']} worker process(es): {r['completed']}/{r['tasks']} completed in {r['seconds']:.1f} s "
                  f"= {r['per_hour']:.0f} tasks/hour; GET /status median {r['status_median_ms']:.1f} ms, "
                  f"p99 {r['status_p99_ms']:.1f} ms ({r['polls']} polls); load average {os.getloadavg()[0]:.2f}",
                  flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
