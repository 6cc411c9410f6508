#!/usr/bin/env python3
"""Load trial: while the workers are busy, 50 clients poll and 10 clients upload 20 MB files at once.

    python scripts/load_trial.py [--pollers 50] [--uploads 10] [--upload-mb 20] [--preload-tasks 10000]

Prints, per endpoint, requests, errors, p50/p99/max latency, and the server's peak memory. With
``--preload-tasks N`` the store starts with N finished tasks (the store-size check: upload and status
latency at 10 000 tasks). Everything runs against a real server on loopback.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
from trial_server import ROOT, ServerProcess, make_clip

sys.path.insert(0, str(ROOT))
from media_cleaner.models import Task  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=50)
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

    server = ServerProcess(data_dir, workers=args.workers, env={"MEDIA_CLEANER_MAX_PENDING_TASKS": "1000"}).start()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def record(endpoint: str, started: float, ok: bool) -> None:
        with lock:
            latencies[endpoint].append(time.perf_counter() - started)
            if not ok:
                errors[endpoint] += 1

    try:
        busy_ids = []
        for _ in range(args.workers):
            with open(busy_clip, "rb") as fh:
                busy_ids.append(httpx.post(server.url + "/upload", files={"file": ("busy.mp4", fh)},
                                           timeout=120).json()["task_id"])
        while httpx.get(server.url + "/stats", timeout=10).json()["workers"]["busy"] < args.workers:
            time.sleep(0.1)
        stop = threading.Event()

        def poll(n: int) -> None:
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
                    time.sleep(0.05)

        def upload() -> None:
            started = time.perf_counter()
            try:
                with open(big, "rb") as fh:
                    ok = httpx.post(server.url + "/upload", files={"file": ("big.mp4", fh)},
                                    timeout=300).status_code == 202
            except httpx.HTTPError:
                ok = False
            record("/upload", started, ok)

        pollers = [threading.Thread(target=poll, args=(n,)) for n in range(args.pollers)]
        [t.start() for t in pollers]
        time.sleep(1)
        started = time.perf_counter()
        uploaders = [threading.Thread(target=upload) for _ in range(args.uploads)]
        [t.start() for t in uploaders]
        [t.join() for t in uploaders]
        upload_wall = time.perf_counter() - started
        time.sleep(1)
        stop.set()
        [t.join() for t in pollers]
        still_busy = httpx.get(server.url + "/stats", timeout=10).json()["workers"]["busy"]
    finally:
        server.stop()

    print(f"store preloaded with {args.preload_tasks} tasks; {args.pollers} pollers, {args.uploads} concurrent "
          f"uploads of {big.stat().st_size / 1e6:.1f} MB (all done in {upload_wall:.1f} s); "
          f"workers busy throughout: {still_busy == args.workers}")
    print(f"{'endpoint':<10} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for endpoint, values in sorted(latencies.items()):
        print(f"{endpoint:<10} {len(values):>8} {errors[endpoint]:>6} {1000 * statistics.median(values):>8.1f} "
              f"{1000 * percentile(values, 0.99):>8.1f} {1000 * max(values):>8.1f}")
    print(f"server peak memory (RSS): {server.peak_rss_kib / 1024:.0f} MiB")
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
