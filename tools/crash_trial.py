#!/usr/bin/env python3
"""Crash trial: SIGKILL a real server at random moments, restart it each time, and check that nothing is lost.

    python -m tools.crash_trial [--kills 20] [--seed 1] [--data-dir DIR]

Each round starts the server, does something, and kills it with SIGKILL in the middle of it:
- ``upload``: a slow streaming upload (the server has part of the file);
- ``processing``: a worker is encoding a task;
- ``store-write``: a burst of small uploads, so that the store is being rewritten.
After every kill ``tasks.json`` must parse. At the end the server runs until the queue is empty, and then
every task that was accepted (202) must be completed with an output of the right frame count, no upload that
was cut off may have left a task or a file, and the temp folder must be empty. Prints a summary; exit 1 on
any loss. ``MEDIA_CLEANER_MAX_ATTEMPTS`` is raised for the trial, since one task may be hit many times.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from tools.trial_server import ServerProcess, make_clip

from media_cleaner.media.probe import probe_media  # noqa: E402
from media_cleaner.service.files import output_name  # noqa: E402


def slow_body(path: Path, chunk: int = 64 * 1024, pause: float = 0.02):
    boundary = "CrashTrial"
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
           f"Content-Type: video/mp4\r\n\r\n").encode()
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            yield data
            time.sleep(pause)
    yield f"\r\n--{boundary}--\r\n".encode()


def upload(url: str, path: Path, accepted: dict, slow: bool = False) -> None:
    try:
        if slow:
            response = httpx.post(url + "/upload", content=slow_body(path), timeout=60,
                                  headers={"content-type": "multipart/form-data; boundary=CrashTrial"})
        else:
            with open(path, "rb") as fh:
                response = httpx.post(url + "/upload", files={"file": (path.name, fh, "video/mp4")}, timeout=60)
        if response.status_code == 202:
            accepted[response.json()["task_id"]] = path
    except httpx.HTTPError:
        pass   # killed mid-request: the client never heard 202, so the server owes nothing


def play_round(server: ServerProcess, kind: str, rng: random.Random, accepted: dict, small: Path,
               medium: Path) -> None:
    """Start ``kind`` of work on ``server`` and kill it with SIGKILL in the middle of it."""
    clients: list[threading.Thread] = []
    if kind == "upload":
        clients = [threading.Thread(target=upload, args=(server.url, medium, accepted, True))]
        clients[0].start()
        time.sleep(rng.uniform(0.05, 0.5))
    elif kind == "processing":
        upload(server.url, medium, accepted)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = httpx.get(server.url + "/stats", timeout=5).json()["workers"]["busy"]
            if busy:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
    else:
        clients = [threading.Thread(target=upload, args=(server.url, small, accepted)) for _ in range(4)]
        [t.start() for t in clients]
        time.sleep(rng.uniform(0.05, 0.4))
    server.kill()
    for client in clients:
        client.join(timeout=60)


def drain(server: ServerProcess, timeout: float = 1800) -> dict[str, dict]:
    """Let the server finish its queue; returns every task by id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = httpx.get(server.url + "/stats", timeout=10).json()["queue"]
        if queue["pending"] == 0 and queue["processing"] == 0:
            break
        time.sleep(0.5)
    return {t["task_id"]: t for t in httpx.get(server.url + "/tasks?limit=500", timeout=10).json()["tasks"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="mc_crash_"))
    data_dir = args.data_dir or work / "data"
    small = make_clip(work / "small.mp4", seconds=1, size="160x120", fps=10)
    medium = make_clip(work / "medium.mp4", seconds=6, size="640x360", fps=25)
    env = {"MEDIA_CLEANER_MAX_ATTEMPTS": "20", "MEDIA_CLEANER_PROGRESS_WRITE_INTERVAL_S": "0.2"}
    accepted: dict[str, Path] = {}
    kinds: dict[str, int] = {}
    port = None
    for round_number in range(args.kills):
        server = ServerProcess(data_dir, env=env, port=port).start()
        kind = rng.choice(["upload", "processing", "store-write"])
        kinds[kind] = kinds.get(kind, 0) + 1
        try:
            play_round(server, kind, rng, accepted, small, medium)
        finally:
            server.kill()
        store = data_dir / "queue_db" / "tasks.json"
        if store.exists():   # absent until the first task is recorded
            json.loads(store.read_text())   # never torn
        print(f"round {round_number + 1:2d}: killed during {kind:11s} ({len(accepted)} tasks accepted so far)")

    server = ServerProcess(data_dir, env=env, port=port).start()
    try:
        tasks = drain(server)
    finally:
        server.stop()

    lost, wrong = [], []
    for task_id, source in accepted.items():
        task = tasks.get(task_id)
        if task is None or task["status"] != "completed":
            lost.append((task_id, task and task["status"]))
            continue
        output = data_dir / "videos_output" / output_name(task["task_id"], task["original_filename"])
        if probe_media(output).frame_count != probe_media(source).frame_count:
            wrong.append(task_id)
    unaccepted = sorted(set(tasks) - set(accepted))   # a task the client never heard about: a cut-off upload
    leftovers = [p.name for p in (data_dir / "videos_temp").rglob("*")] + \
        [p.name for p in (data_dir / "videos_input").glob(".*.part")]
    print(f"\nkills: {args.kills} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print(f"tasks accepted: {len(accepted)}, completed with a correct output: {len(accepted) - len(lost) - len(wrong)}")
    print(f"lost: {len(lost)} {lost or ''}; wrong output: {len(wrong)}; tasks from cut-off uploads: "
          f"{len(unaccepted)}; leftover temp/partial files: {len(leftovers)}")
    attempts = [tasks[t]["attempts"] for t in accepted if t in tasks]
    print(f"attempts per task: max {max(attempts, default=0)}, mean {sum(attempts) / max(1, len(attempts)):.2f}")
    return 1 if lost or wrong or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
