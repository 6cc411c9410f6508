"""The JSON task store: atomicity, locking, throttling, recovery after a crash."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from media_cleaner.service.tasks import Task, TaskStatus
from media_cleaner.service.store.json_store import JsonTaskStore, StoreError


def make_task(i: int = 0, **fields) -> Task:
    base = dict(task_id=f"{i:032x}", original_filename=f"v{i}.mp4", epsilon=0.12, video_strength=1.0,
                audio_level="weak", every_n_frames=10, input_video=f"videos_input/{i:032x}.mp4")
    base.update(fields)
    return Task(**base)


@pytest.fixture
def store(tmp_path):
    s = JsonTaskStore(tmp_path / "queue_db" / "tasks.json", progress_interval_s=1.0)
    s.open()
    yield s
    s.close()


def on_disk(store) -> dict:
    return {t["task_id"]: t for t in json.loads(store.path.read_text())["tasks"]}


def test_every_change_is_on_disk(store):
    store.add(make_task(1))
    assert on_disk(store)[f"{1:032x}"]["status"] == "pending"
    store.update(f"{1:032x}", status=TaskStatus.failed, error_message="boom")
    assert on_disk(store)[f"{1:032x}"]["error_message"] == "boom"


def test_fifo_claim_counts_attempts(store):
    for i in range(3):
        store.add(make_task(i))
    claimed = [store.claim_next().task_id for _ in range(3)]
    assert claimed == [f"{i:032x}" for i in range(3)]
    assert store.claim_next() is None
    assert on_disk(store)[f"{0:032x}"]["attempts"] == 1
    assert on_disk(store)[f"{0:032x}"]["status"] == "processing"


def test_concurrent_writers_lose_nothing(store):
    def writer(start):
        for i in range(start, start + 25):
            store.add(make_task(i))
            store.update(f"{i:032x}", notes=f"note {i}")
    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    tasks = on_disk(store)
    assert len(tasks) == 100
    assert all(t["notes"] == f"note {int(t['task_id'], 16)}" for t in tasks.values())


def test_queue_position_is_the_place_in_the_fifo(store):
    for i in range(3):
        store.add(make_task(i))
    assert [store.queue_position(f"{i:032x}") for i in range(3)] == [1, 2, 3]
    store.claim_next()   # the first starts: everyone moves up, and a running task has no place in the queue
    assert [store.queue_position(f"{i:032x}") for i in range(3)] == [None, 1, 2]
    assert store.queue_position("f" * 32) is None


def test_progress_writes_are_throttled_but_visible(store, monkeypatch):
    store.add(make_task(1))
    task_id = store.claim_next().task_id
    writes = []
    real_write = store._write
    monkeypatch.setattr(store, "_write", lambda: (writes.append(1), real_write()))
    for step in range(200):
        store.update_progress(task_id, step / 2, 10.0)
    assert store.get(task_id).progress == 99.5          # in memory at once
    assert len(writes) <= 1                             # on disk at most once per second
    time.sleep(1.05)
    store.update_progress(task_id, 99.9, 1.0)
    assert len(writes) <= 2 and on_disk(store)[task_id]["progress"] == 99.9


def test_crash_between_temp_write_and_rename_keeps_the_old_file(store, monkeypatch):
    store.add(make_task(1))
    before = store.path.read_bytes()

    def crash(src, dst):
        raise OSError("power cut")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.add(make_task(2))
    monkeypatch.undo()
    assert store.path.read_bytes() == before                 # old file intact, valid JSON
    leftovers = list(store.path.parent.glob(".tasks.json.*.tmp"))
    assert leftovers                                         # the torn temp file is there ...
    store.close()
    reopened = JsonTaskStore(store.path)
    reopened.open()                                          # ... and start-up removes it
    assert not list(store.path.parent.glob(".tasks.json.*.tmp"))
    assert reopened.ids() == {f"{1:032x}"}
    reopened.close()


def test_recovery_requeues_then_fails_after_max_attempts(tmp_path):
    path = tmp_path / "queue_db" / "tasks.json"
    path.parent.mkdir(parents=True)
    tasks = [make_task(1, status="processing", attempts=1, progress=40.0),
             make_task(2, status="processing", attempts=3),
             make_task(3, status="completed", attempts=1)]
    path.write_text(json.dumps({"format": 1, "tasks": [t.model_dump(mode="json") for t in tasks]}))
    store = JsonTaskStore(path)
    store.open()
    store.recover(max_attempts=3)
    assert store.get(f"{1:032x}").status == TaskStatus.pending
    assert store.get(f"{1:032x}").progress == 0
    failed = store.get(f"{2:032x}")
    assert failed.status == TaskStatus.failed and "interrupted 3 times" in failed.error_message
    assert store.get(f"{3:032x}").status == TaskStatus.completed
    store.close()


@pytest.mark.parametrize("shape", ["list", "dict", "wrapped"])
def test_a_restored_backup_is_accepted_as_is(tmp_path, shape):
    path = tmp_path / "tasks.json"
    records = [make_task(i, extra_field="from a newer version").model_dump(mode="json") for i in range(2)]
    payload = {"list": records, "dict": {r["task_id"]: r for r in records},
               "wrapped": {"format": 1, "tasks": records}}[shape]
    path.write_text(json.dumps(payload))
    store = JsonTaskStore(path)
    store.open()
    assert store.ids() == {f"{0:032x}", f"{1:032x}"}
    store.update(f"{0:032x}", notes="x")                     # unknown fields survive a rewrite
    assert on_disk(store)[f"{1:032x}"]["extra_field"] == "from a newer version"
    store.close()


def test_an_unreadable_store_is_never_overwritten(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text('{"tasks": [')
    with pytest.raises(StoreError, match="not valid JSON"):
        JsonTaskStore(path).open()
    assert path.read_text() == '{"tasks": ['


def test_second_store_on_the_same_folder_is_refused(store):
    with pytest.raises(StoreError, match="already using the data folder"):
        JsonTaskStore(store.path).open()


def test_the_lock_dies_with_the_process(tmp_path):
    path = tmp_path / "queue_db" / "tasks.json"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from media_cleaner.service.store.json_store import JsonTaskStore; "
        f"s = JsonTaskStore(__import__('pathlib').Path({str(path)!r})); s.open(); print('ok', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError):
            JsonTaskStore(path).open()
        holder.kill()                                        # kill -9: no chance to clean up
        holder.wait()
        again = JsonTaskStore(path)
        again.open()
        again.close()
    finally:
        holder.kill()


def test_reads_return_copies_that_share_nothing_mutable(store):
    store.add(make_task(1, media={"width": 640, "streams": [{"codec": "h264"}]}, report={"faces": {"before": 3}},
                        future_field={"kept": [1]}))   # an unknown field from a newer tasks.json is kept too
    original = store.get(f"{1:032x}")
    for copy in (store.get(f"{1:032x}"), store.list()[0][0]):
        assert copy == original and copy.model_fields_set == original.model_fields_set
        copy.media["streams"][0]["codec"] = "changed"
        copy.report["faces"]["before"] = 0
        copy.future_field["kept"].append(2)
        copy.progress = 50.0
    again = store.get(f"{1:032x}")
    assert again == original and again.media["streams"][0]["codec"] == "h264"
    assert again.report == {"faces": {"before": 3}} and again.future_field == {"kept": [1]} and again.progress == 0


def test_counts_by_status(store):
    for i in range(5):
        store.add(make_task(i))
    store.update(f"{0:032x}", status=TaskStatus.completed)
    store.update(f"{1:032x}", status=TaskStatus.failed)
    assert store.counts() == {"pending": 3, "processing": 0, "completed": 1, "failed": 1, "cancelled": 0,
                              "total": 5}
    store.counts()["pending"] = 99   # the caller's copy
    store.delete(f"{1:032x}")
    store.claim_next()
    assert store.counts() == {"pending": 2, "processing": 1, "completed": 1, "failed": 0, "cancelled": 0,
                              "total": 4}


def test_counts_after_a_failed_write_match_memory(store, monkeypatch):
    store.add(make_task(1))
    assert store.counts()["pending"] == 1

    def full_disk():
        raise OSError("No space left on device")
    monkeypatch.setattr(store, "_write", full_disk)
    with pytest.raises(OSError):
        store.update(f"{1:032x}", status=TaskStatus.failed)
    with pytest.raises(OSError):
        store.add(make_task(2))
    assert store.counts() == {"pending": 1, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0,
                              "total": 1}
