#!/usr/bin/env python3
"""How the API and busy engine processes share the CPU: 2 workers process a clip each while 4 client threads
poll ``GET /status`` back to back for ``--seconds``; prints requests per second and the CPU used by the
server process and by its children (engine processes, ffmpeg), and each process's scheduling autogroup.

    python -m tools.engine_share [--seconds 15] [--clients 4]

This is the measurement behind the process-group choice in ``media_cleaner/service/queue/engine_process.py`` (a session of
its own puts a child in its own autogroup, where its nice value no longer yields the CPU to the API).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from tools.trial_server import ServerProcess, cpu_seconds, descendants, make_clip


def total_cpu(pids: list[int]) -> float:
    seconds = 0.0
    for pid in pids:
        try:
            seconds += cpu_seconds(pid)
        except OSError:   # an ffmpeg child that has ended
            pass
    return seconds


def autogroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mc_share_"))
    clip = make_clip(work / "busy.mp4", seconds=30, size="640x360")
    server = ServerProcess(work / "data", workers=2).start()
    try:
        ids = []
        for _ in range(2):
            with open(clip, "rb") as fh:
                ids.append(httpx.post(server.url + "/upload", files={"file": ("busy.mp4", fh)},
                                      timeout=120).json()["task_id"])
        while not all(httpx.get(f"{server.url}/status/{i}", timeout=10).json()["progress"] > 0 for i in ids):
            time.sleep(0.5)   # busy means processing frames, not loading models
        children = descendants(server.proc.pid)
        print("autogroups:", {pid: autogroup(pid) for pid in [server.proc.pid, *children]})
        answered, stop = [0] * args.clients, threading.Event()

        def poll(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    client.get(f"/status/{ids[0]}").raise_for_status()
                    answered[n] += 1

        server_cpu, children_cpu, started = cpu_seconds(server.proc.pid), total_cpu(children), time.perf_counter()
        threads = [threading.Thread(target=poll, args=(n,)) for n in range(args.clients)]
        [t.start() for t in threads]
        time.sleep(args.seconds)
        stop.set()
        [t.join() for t in threads]
        elapsed = time.perf_counter() - started
        print(f"requests/s {sum(answered) / elapsed:.0f}; server CPU "
              f"{100 * (cpu_seconds(server.proc.pid) - server_cpu) / elapsed:.0f} % of a core; engines and ffmpeg "
              f"{100 * (total_cpu(descendants(server.proc.pid)) - children_cpu) / elapsed:.0f} %")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
