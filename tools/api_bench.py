#!/usr/bin/env python3
"""Per-request cost of the polling endpoints on an idle server (no load, one client, sequential requests).

    python -m tools.api_bench [--requests 2000] [--preload-tasks 0] [--only /status] [--log-level WARNING]

Starts a real server (``run_server.py``, as the trial scripts do) with 50 finished tasks (or
``--preload-tasks``) in its store, then sends ``--requests`` sequential GETs to each of ``/status/{id}``, ``/tasks?limit=20`` and ``/stats`` and prints,
per endpoint, the mean wall time per request and the server process's CPU time per request (user + system,
from ``/proc/<pid>/stat``, so the client's own CPU is not counted). Server CPU per request bounds the
throughput of the single API process: about 1 / (CPU s per request) requests per second on one core.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tools.load_trial import preload
from tools.trial_server import ServerProcess, cpu_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--preload-tasks", type=int, default=0)
    parser.add_argument("--only", choices=["/status", "/tasks", "/stats"], help="measure this endpoint alone")
    parser.add_argument("--log-level", default="WARNING", help="the server's log level (INFO logs each request)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mc_bench_"))
    preload(work / "data", max(args.preload_tasks, 50))   # finished tasks to ask about
    server = ServerProcess(work / "data", workers=1, log_level=args.log_level,
                           env={"MEDIA_CLEANER_WARM_UP": "false"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            task_id = client.get("/tasks", params={"limit": 1}).json()["tasks"][0]["task_id"]
            endpoints = {"/status": f"/status/{task_id}", "/tasks": "/tasks?limit=20", "/stats": "/stats"}
            if args.only:
                endpoints = {args.only: endpoints[args.only]}
            for url in endpoints.values():   # warm up (imports, caches)
                for _ in range(50):
                    client.get(url).raise_for_status()
            print(f"{'endpoint':<8} {'requests':>8} {'wall ms/req':>11} {'server CPU ms/req':>17}")
            for name, url in endpoints.items():
                cpu0, wall0 = cpu_seconds(server.proc.pid), time.perf_counter()
                for _ in range(args.requests):
                    client.get(url).raise_for_status()
                wall, cpu = time.perf_counter() - wall0, cpu_seconds(server.proc.pid) - cpu0
                print(f"{name:<8} {args.requests:>8} {1000 * wall / args.requests:>11.2f} "
                      f"{1000 * cpu / args.requests:>17.2f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
