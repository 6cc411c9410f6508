#!/usr/bin/env python3
"""Push one video through a real server and print wall time and peak memory (server process and the whole
process tree with its ffmpeg children), sampled every 0.2 s from /proc. Linux only.

    python -m tools.server_memory VIDEO [--data-dir DIR] [--port 8765] [--workers 1]

Used for the "memory stays flat whatever the length" check: run it on a clip and on a 10× longer one.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from tools.trial_server import ROOT, descendants, rss_kib

from media_cleaner.service.files import output_name  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="mc_mem_"))
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "run_server.py"), "--port", str(args.port),
                               "--workers", str(args.workers), "--data-dir", str(data_dir),
                               "--log-level", "WARNING"], cwd=ROOT)
    peak = {"server": 0, "tree": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            server_rss = rss_kib(server.pid)
            tree = server_rss + sum(rss_kib(p) for p in descendants(server.pid))
            peak["server"], peak["tree"] = max(peak["server"], server_rss), max(peak["tree"], tree)
            time.sleep(0.2)

    try:
        for _ in range(300):
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        idle_rss = rss_kib(server.pid)
        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        with open(args.video, "rb") as fh:
            task = httpx.post(url + "/upload", files={"file": (args.video.name, fh, "video/mp4")},
                              timeout=600).json()
        uploaded = time.monotonic()
        while True:
            task = httpx.get(f"{url}/status/{task['task_id']}", timeout=30).json()
            if task["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(1)
        done = time.monotonic()
        stop.set()
        print(f"video: {args.video.name} ({args.video.stat().st_size / 1e6:.0f} MB, "
              f"{task['media']['frames']} frames, {task['media']['duration_s']:.1f} s)")
        print(f"status: {task['status']} {task.get('error_message') or ''}")
        print(f"upload: {uploaded - started:.1f} s, processing: {done - uploaded:.1f} s")
        print(f"server RSS idle: {idle_rss / 1024:.0f} MiB, peak: {peak['server'] / 1024:.0f} MiB; "
              f"peak with its children (engine processes, ffmpeg): {peak['tree'] / 1024:.0f} MiB")
        if task["status"] == "completed":
            print(f"output: {data_dir / 'videos_output' / output_name(task['task_id'], task['original_filename'])}")
        return 0 if task["status"] == "completed" else 1
    finally:
        stop.set()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
