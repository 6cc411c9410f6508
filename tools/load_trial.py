#!/usr/bin/env python3
"""Load trial: while the workers are busy, 50 clients poll and 10 clients upload 20 MB files at once.

    python -m tools.load_trial [--pollers 50] [--poll-interval 1.0] [--uploads 10] [--upload-mb 20]
                                 [--preload-tasks 10000]

Each poller cycles through ``GET /status/{id}``, ``/tasks?limit=20`` and ``/stats``, waiting
``--poll-interval`` seconds after each answer. The default is ``client.py``'s ``POLL_INTERVAL`` (1 s): what
the product's own client waits before its first re-poll (it then backs off ×1.5, so real clients poll less
often than this). ``--poll-interval 0.05`` is a saturation test: 50 pollers then offer about 1000 requests a
second, more than one API process answers on a small machine, so the latencies it prints are mostly queueing
(Little's law), not the cost of a request. The printout gives the offered rate (pollers / interval) and the
achieved one (poll requests answered per second) so the two cases can be told apart; see
``tools/api_bench.py`` for the CPU cost of one request on an idle server.

Prints, per endpoint, requests, errors, p50/p99/max latency, and the peak memory of the server process and
of its children (engine processes, ffmpeg). With ``--preload-tasks N`` the store starts with N finished
tasks (the store-size check: upload and status latency at 10 000 tasks). Everything runs against a real
server on loopback. To compare with the engines in the server's own worker threads, run it with
``MEDIA_CLEANER_ENGINE_PROCESSES=false``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
from tools.trial_server import ServerProcess, cpu_seconds, make_clip

from client import POLL_INTERVAL  # noqa: E402
from media_cleaner.service.tasks import Task  # noqa: E402


def preload(data_dir: Path, count: int) -> None:
    """A tasks.json with ``count`` completed tasks, as a long-running server would have."""
    (data_dir / "queue_db").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(count):
        task_id = uuid.uuid4().hex
        tasks.append(Task(task_id=task_id, original_filename=f"video_{i}.mp4", epsilon=0.12, video_strength=1.0,
                          audio_level="weak", every_n_frames=10, status="completed", progress=100.0,
                          user_id=f"user{i % 50}", output_video=f"videos_output/{task_id}_video_{i}_protected.mp4",
                          completed_at="2099-01-01T00:00:00+00:00",
                          media={"duration_s": 5.0, "width": 640, "height": 360, "fps": 25.0, "frames": 125,
                                 "has_audio": True}).model_dump(mode="json"))
    (data_dir / "queue_db" / "tasks.json").write_text(json.dumps({"format": 1, "tasks": tasks}))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def upload_all(url: str, path: str, count: int) -> list[tuple[float, bool]]:
    """``count`` concurrent uploads of ``path``; (seconds, accepted) for each. Runs in a process of its own: in
    the pollers' process its threads would hold the pollers' GIL, and the pollers would time the wait."""
    results: list[tuple[float, bool]] = []

    def upload() -> None:
        started = time.perf_counter()
        try:
            with open(path, "rb") as fh:
                ok = httpx.post(url + "/upload", files={"file": ("big.mp4", fh)}, timeout=300).status_code == 202
        except httpx.HTTPError:
            ok = False
        results.append((time.perf_counter() - started, ok))

    threads = [threading.Thread(target=upload) for _ in range(count)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL, metavar="SECONDS",
                        help=f"each poller's wait after an answer (default {POLL_INTERVAL}: client.py's; "
                             f"0.05 saturates the server)")
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--upload-mb", type=float, default=20)
    parser.add_argument("--preload-tasks", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mc_load_"))
    data_dir = work / "data"
    busy_clip = make_clip(work / "busy.mp4", seconds=30, size="640x360")
    big = make_clip(work / "big.mp4", seconds=8, size="1280x720", crf=8)
    # Pad to the requested size with a free box: still one valid mp4 (ffmpeg skips "free" atoms).
    missing = int(args.upload_mb * 1e6) - big.stat().st_size
    if missing > 8:
        with open(big, "ab") as fh:
            fh.write(missing.to_bytes(4, "big") + b"free" + b"\0" * (missing - 8))
    if args.preload_tasks:
        preload(data_dir, args.preload_tasks)

    uploader = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    uploader.submit(int).result()   # started (and its imports done) before the clock runs
    server = ServerProcess(data_dir, workers=args.workers, env={"MEDIA_CLEANER_MAX_PENDING_TASKS": "1000"}).start()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    poll_starts: list[float] = []
    lock = threading.Lock()

    def record(endpoint: str, started: float, ok: bool, seconds: float | None = None) -> None:
        with lock:
            latencies[endpoint].append(time.perf_counter() - started if seconds is None else seconds)
            if endpoint != "/upload":
                poll_starts.append(started)
            if not ok:
                errors[endpoint] += 1

    try:
        busy_ids = []
        for _ in range(args.workers):
            with open(busy_clip, "rb") as fh:
                busy_ids.append(httpx.post(server.url + "/upload", files={"file": ("busy.mp4", fh)},
                                           timeout=120).json()["task_id"])
        # Busy means processing frames: engines loaded (an engine process starting up is a different load).
        deadline = time.monotonic() + 300
        while not all(httpx.get(f"{server.url}/status/{task_id}", timeout=10).json()["progress"] > 0
                      for task_id in busy_ids):
            if time.monotonic() > deadline:
                raise RuntimeError("the busy tasks did not start processing within 5 minutes")
            time.sleep(0.2)
        stop = threading.Event()

        def poll(n: int) -> None:
            # Staggered starts: independent clients do not poll in step.
            if stop.wait(n * args.poll_interval / args.pollers):
                return
            with httpx.Client(base_url=server.url, timeout=30) as client:
                endpoints = [f"/status/{busy_ids[n % len(busy_ids)]}", "/tasks?limit=20", "/stats"]
                i = n
                while not stop.is_set():
                    url = endpoints[i % 3]
                    started = time.perf_counter()
                    try:
                        ok = client.get(url).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    record(url.split("?")[0].rsplit("/", 1)[0] if url.startswith("/status") else url.split("?")[0],
                           started, ok)
                    i += 1
                    stop.wait(args.poll_interval)

        pollers = [threading.Thread(target=poll, args=(n,)) for n in range(args.pollers)]
        [t.start() for t in pollers]
        time.sleep(max(1.0, 2 * args.poll_interval))   # every poller started and in its rhythm
        cpu_before, pollers_cpu_before = cpu_seconds(server.proc.pid), time.process_time()
        started = time.perf_counter()
        for seconds, ok in uploader.submit(upload_all, server.url, str(big), args.uploads).result():
            record("/upload", 0.0, ok, seconds)
        upload_wall = time.perf_counter() - started
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        pollers_cpu = time.process_time() - pollers_cpu_before
        time.sleep(max(1.0, args.poll_interval))
        stop.set()
        [t.join() for t in pollers]
        still_busy = httpx.get(server.url + "/stats", timeout=10).json()["workers"]["busy"]
    finally:
        uploader.shutdown()
        server.stop()

    print(f"store preloaded with {args.preload_tasks} tasks; {args.pollers} pollers, {args.uploads} concurrent "
          f"uploads of {big.stat().st_size / 1e6:.1f} MB (all done in {upload_wall:.1f} s); "
          f"workers busy throughout: {still_busy == args.workers}")
    # Rates while the uploads ran: polls started in that window, per second.
    achieved = sum(started <= t < started + upload_wall for t in poll_starts) / upload_wall
    offered = args.pollers / args.poll_interval
    print(f"polling: {args.pollers} pollers, {args.poll_interval:g} s between polls: offered {offered:.0f} requests/s, "
          f"achieved {achieved:.0f} requests/s during the uploads"
          + ("  (saturated: the latencies below are mostly queueing, in the server or in this process)" if achieved < 0.8 * offered else ""))
    print(f"CPU during the uploads ({upload_wall:.1f} s): server (API) process {server_cpu:.1f} s "
          f"({100 * server_cpu / upload_wall:.0f}% of one core), the pollers' process (this one) {pollers_cpu:.1f} s "
          f"({100 * pollers_cpu / upload_wall:.0f}%); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'endpoint':<10} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for endpoint, values in sorted(latencies.items()):
        print(f"{endpoint:<10} {len(values):>8} {errors[endpoint]:>6} {1000 * statistics.median(values):>8.1f} "
              f"{1000 * percentile(values, 0.99):>8.1f} {1000 * max(values):>8.1f}")
    print(f"peak memory (RSS): server process {server.peak_rss_kib / 1024:.0f} MiB, its children (engine "
          f"processes, ffmpeg) {server.peak_children_rss_kib / 1024:.0f} MiB")
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
